"""Responses are read only after their status is checked."""

from __future__ import annotations

from typing import Any, TypeVar

R = TypeVar("R")


def ok(resp: R, status: int = 200) -> R:
    """`resp` once its status code is `status` (the body is shown when it is not)."""
    code: Any = getattr(resp, "status_code", None)
    assert code == status, f"status {code}, expected {status}: {getattr(resp, 'text', '')[:500]}"
    return resp


def server_timing(resp: Any) -> dict[str, float]:
    """The answer's Server-Timing entries as {stage: ms}, in order."""
    entries = [e.strip().split(";dur=") for e in resp.headers["server-timing"].split(",")]
    return {name: float(ms) for name, ms in entries}
