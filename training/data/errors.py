"""The one error every data reader raises, and the one number rule they share (stdlib only, so
that every reader can import it without importing another reader)."""

from __future__ import annotations

import math
from pathlib import Path


class DataError(ValueError):
    """Malformed input; the message starts with `file:line`."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def number(path: Path, line: int, name: str, text: str) -> float:
    """A finite number from a text field; a DataError naming the field otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, line, f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise DataError(path, line, f"{name} must be finite, got {text!r}")
    return value
