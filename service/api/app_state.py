"""The application's state, in one place that the app factory and the routes both import.

The factory builds an `AppState` and hangs it on the app; routes get it through `AppStateDep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.serving.holder import ModelHolder
from service.serving.recommendations import Recommendations
from service.state.cache import Cache
from service.state.store import Store
from service.telemetry import Metrics


@dataclass
class AppState:
    settings: Settings
    holder: ModelHolder
    cache: Cache
    store: Store
    store_backend: str
    metrics: Metrics
    recommendations: Recommendations


def state_of(request: Request) -> AppState:
    return request.app.state.cddae


async def get_state(request: Request) -> AppState:
    """async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
    on every request for a dictionary lookup."""
    return state_of(request)


AppStateDep = Annotated[AppState, Depends(get_state)]
