"""Request dependencies: the app state and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unauthorized
from app.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.upscaler
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def require_api_key(request: Request, state: StateDep) -> None:
    """With UPSCALER_API_KEY set: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in
    constant time. Raises Unauthorized."""
    if state.settings.api_key is None:
        return
    expected = state.settings.api_key.get_secret_value().encode()
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer <key> or X-API-Key)")
