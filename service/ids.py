"""What a user or item id may be: one rule for the API's door and for training's folding of
recorded events (stdlib only, part of the contract both sides import).

An id is 1 to `MAX_ID_LENGTH` characters with no control characters (C0, DEL, C1), no line or
paragraph separators, no lone surrogates and no U+FFFD. Those are what turned a write into a
different user for training than for the service (numpy drops trailing NULs), broke line-based
readers, or could not be encoded for Redis; U+FFFD is what the server makes of a path's bytes
that are not UTF-8, so `/users/%ff` and `/users/%fe` were one user. Anything else — "²", "é",
"a b" — is a fine id, kept as is.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 128
# The same text goes into the OpenAPI schema, so clients and fuzzers see the rule enforced (as
# ECMA 262 reads it). Lone surrogates are refused apart: no such regex range is valid there,
# and no valid UTF-8 text holds them, so only an escaped JSON string can bring one.
ID_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ufffd]+$"
_ID = re.compile(ID_PATTERN)
_SURROGATE = re.compile("[\\ud800-\\udfff]")


def id_problem(value: object, what: str = "id") -> str | None:
    """Why `value` is not a valid id, or None when it is."""
    if not isinstance(value, str):
        return f"{what} must be a string, not {type(value).__name__}"
    if not value:
        return f"{what} is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} is longer than {MAX_ID_LENGTH} characters"
    if not _ID.fullmatch(value) or _SURROGATE.search(value):
        return (
            f"{what} {value!r} holds a control character, a line separator, a lone surrogate "
            "or U+FFFD (what bytes that are not UTF-8 decode to)"
        )
    return None


def check_id(value: str) -> str:
    """`value` when valid; ValueError naming the problem (pydantic turns it into a 422)."""
    if problem := id_problem(value):
        raise ValueError(problem)
    return value
