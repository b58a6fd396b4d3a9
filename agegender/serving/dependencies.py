"""The routes' dependencies: the app's ServiceState, and the API key check of /v1/ routes."""
from __future__ import annotations

import hmac
from typing import Optional

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agegender.serving.api_errors import ApiError
from agegender.serving.state import ServiceState

bearer = HTTPBearer(auto_error=False, description="the key of --api-key-file (only when the server has one)")


# async: a plain function would be run on Starlette's thread pool for every request
async def service_state(request: Request) -> ServiceState:
    """The ServiceState create_app put on the app."""
    return request.app.state.service


async def authorised(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer),
                     state: ServiceState = Depends(service_state)) -> None:
    """401 unless the request carries the server's key (any request passes when the server has none)."""
    if state.api_key is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), state.api_key.encode()):
        raise ApiError(401, "unauthorized", "this server needs 'Authorization: Bearer <key>'",
                       {"WWW-Authenticate": "Bearer"})
