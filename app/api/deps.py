"""Request dependencies: the app state and the API-key check.

Both are `async def` though neither awaits: FastAPI runs a plain `def` dependency on its thread pool,
a hand-off to another thread and back for every request (every /health probe included), where these
few attribute reads and comparisons take microseconds on the event loop."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import (
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)

from app.errors import Unauthorized
from app.state import AppState


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.upscaler
    return state


StateDep = Annotated[AppState, Depends(get_state)]


# The three ways a client may send UPSCALER_API_KEY, as OpenAPI security schemes (Swagger's Authorize).
bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <UPSCALER_API_KEY>`")
header_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="`X-API-Key: <UPSCALER_API_KEY>`"
)
basic_scheme = HTTPBasic(
    auto_error=False, description="any user name, the key as password (how A1111 clients send --api-auth)"
)


async def require_api_key(
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header: Annotated[str | None, Depends(header_scheme)],
    basic: Annotated[HTTPBasicCredentials | None, Depends(basic_scheme)],
) -> None:
    """With UPSCALER_API_KEY set, one of the schemes must carry it (compared in constant time).
    Raises Unauthorized. Without a key the service is open and this checks nothing."""
    if state.settings.api_key is None:
        return
    expected = state.settings.api_key.get_secret_value().encode()
    given = [c for c in (bearer and bearer.credentials, header, basic and basic.password) if c]
    if not any(hmac.compare_digest(c.encode(), expected) for c in given):
        raise Unauthorized(
            "missing or wrong API key (Authorization: Bearer <key>, X-API-Key, "
            "or Basic auth with the key as password)"
        )
