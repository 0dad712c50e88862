"""Dependencies, declared once as `Annotated` aliases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from service.main import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.cddae


AppStateDep = Annotated["AppState", Depends(get_state)]
