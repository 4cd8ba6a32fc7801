"""Request dependencies: the app state and the API-key check."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unauthorized
from app.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.upscaler
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def given_key(request: Request) -> str:
    """The key a client sent: `Authorization: Bearer <key>`, `X-API-Key: <key>`, or the password of
    HTTP Basic auth (how A1111 clients such as webuiapi's set_auth send credentials)."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return request.headers.get("x-api-key", "")


def require_api_key(request: Request, state: StateDep) -> None:
    """With UPSCALER_API_KEY set, the client's key (see `given_key`) must match, compared in constant
    time. Raises Unauthorized."""
    if state.settings.api_key is None:
        return
    expected = state.settings.api_key.get_secret_value().encode()
    if not hmac.compare_digest(given_key(request).encode(), expected):
        raise Unauthorized(
            "missing or wrong API key (Authorization: Bearer <key>, X-API-Key, "
            "or Basic auth with the key as password)"
        )
