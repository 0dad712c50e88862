"""The recommendation service: FastAPI + onnxruntime, never torch.

Rooms, each importing only the ones below it:
- `service.api`      HTTP: app factory, routes, schemas, middleware, the uvicorn server.
- `service.serving`  the model in service and what answers are made of (no web code).
- `service.state`    what outlives a request: the answer cache and the interaction store.
- top level          `bundle`, `features` and `ids`, the contract training and serving share
                     (stdlib + numpy only); `config` (the settings) and `telemetry` (metrics).
"""
