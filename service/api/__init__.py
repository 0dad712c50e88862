"""HTTP: the app factory, routes, request and answer schemas, middleware, the uvicorn server.

May import `service.serving`, `service.state` and the top-level modules; nothing imports it
but `training.cli` (to serve). Inside: server → app → routes → app_state, never back.
"""
