"""Dependencies, declared once as `Annotated` aliases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from service.main import AppState


def state_of(request: Request) -> AppState:
    return request.app.state.cddae


async def get_state(request: Request) -> AppState:
    """async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
    on every request for a dictionary lookup."""
    return state_of(request)


AppStateDep = Annotated["AppState", Depends(get_state)]
