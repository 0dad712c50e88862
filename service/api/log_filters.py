"""Logging filters for what clients can make the server say: a flood must not fill the disk."""

from __future__ import annotations

import logging
import time


class OncePerMinute(logging.Filter):
    """Lets a repeated message through once a minute: a client sending garbage requests
    must not be able to fill the disk with "Invalid HTTP request received"."""

    def __init__(self, messages: tuple[str, ...]):
        super().__init__()
        self.messages, self.last = messages, {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.messages):
            return True
        now = time.monotonic()
        if now - self.last.get(message, -60.0) < 60:
            return False
        self.last[message] = now
        return True


def quiet_invalid_requests() -> None:
    """Once per process (worker processes call it again from the app factory)."""
    noisy = {
        "uvicorn.error": ("Invalid HTTP request",),
        "cddae.server": ("a client holds more than", "closing a connection"),
    }
    for name, messages in noisy.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerMinute) for f in logger.filters):
            logger.addFilter(OncePerMinute(messages))
