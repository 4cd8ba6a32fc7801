"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no limit on how long a
connection may take to send a request's headers: a client that opens connections and stalls (or
drips one byte at a time) would hold them for ever. This h11 protocol closes a connection whose next
request's headers are not complete within UPSCALER_READ_TIMEOUT_S of its first byte (or of the
connection's start). The body's own deadline is the app's (app/api/uploads.py: 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle: Any = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                self._disarm()  # headers are in: the request is the app's now
            else:
                self._arm()  # between requests, or inside an incomplete request head

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            cycle: Any = getattr(self, "cycle", None)
            if cycle is None or cycle.response_complete:
                self.transport.close()

    return HeaderTimeoutProtocol
