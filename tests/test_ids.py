"""The one id rule (service/ids.py): what it refuses and why, and that the OpenAPI pattern says
the same for every character it names."""

from __future__ import annotations

import re

import pytest

from service.ids import ID_PATTERN, MAX_ID_LENGTH, id_problem


@pytest.mark.parametrize(
    "value", ["196", "²", "é", "a b", "%ff", "x" * MAX_ID_LENGTH, "日本", "\U0001f600"]
)
def test_fine_ids(value: str) -> None:
    assert id_problem(value) is None
    assert re.fullmatch(ID_PATTERN, value)


@pytest.mark.parametrize(
    "value",
    [
        "3\x00",  # numpy dropped it: another user to the service, user 3 to training
        "3\n",
        "a\u2028b",
        "\x85",
        "3\ufffd",  # what a path's bytes that are not UTF-8 become: /users/3%ff and 3%fe merged
        "\ufffd\ufffd",
    ],
)
def test_refused_ids_are_named(value: str) -> None:
    problem = id_problem(value, "user id")
    assert problem is not None and problem.startswith("user id")
    assert not re.fullmatch(ID_PATTERN, value)


def test_lone_surrogates_empty_long_and_non_strings() -> None:
    assert "lone surrogate" in (id_problem("a\ud800") or "")
    assert id_problem("") == "id is empty"
    assert "longer than" in (id_problem("x" * (MAX_ID_LENGTH + 1)) or "")
    assert id_problem(196) == "id must be a string, not int"
