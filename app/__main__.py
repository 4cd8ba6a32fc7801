"""`python -m app`: validate settings (one line on error), then serve with uvicorn.

SIGTERM drains: uvicorn stops accepting connections and lets the requests in flight finish (up to
UPSCALER_SHUTDOWN_GRACE_S), then the app's lifespan waits for the device queues, and the process exits 0.
"""

from __future__ import annotations

import math
import signal
import sys
from types import FrameType


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    # uvicorn handles SIGTERM while it serves, then raises it again once it has shut down; this
    # handler (in place before and after that) makes a graceful stop exit 0 rather than die by signal.
    raise SystemExit(0)


def configure_logging(level: str) -> None:
    """The service's own loggers beside uvicorn's; the access log as bare JSON lines on stdout."""
    import logging

    logging.basicConfig(level=level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("app.access")
    access.addHandler(handler)
    access.propagate = False


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_cleanly)
    from app.config import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"upscaler: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    configure_logging(settings.log_level)
    if not settings.loopback_only and settings.api_key is None:
        import logging

        logging.getLogger("app").warning(
            "listening on %s without an API key: anyone who can reach this port can use the service "
            "(set UPSCALER_API_KEY, or UPSCALER_HOST=127.0.0.1 to stay on this machine)",
            settings.host,
        )

    from app.main import create_app
    from app.server import header_timeout_protocol

    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,  # app.access writes one JSON line per request instead
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
            http=header_timeout_protocol(settings.read_timeout_s),
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=5,
        )
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down gracefully, then re-raised SIGINT
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
