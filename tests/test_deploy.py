"""The Dockerfile, compose file and Makefile call the same `cddae` commands the tests run:
every invocation they hold must parse with the real command-line parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from training.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _invocations() -> list[tuple[str, list[str]]]:
    found = []
    dockerfile = (ROOT / "Dockerfile").read_text()
    for cmd in re.findall(r"^CMD (\[.*\])", dockerfile, flags=re.M):
        words = [w.strip().strip('"') for w in cmd.strip("[]").split(",")]
        if words[0] == "cddae":
            found.append(("Dockerfile", words[1:]))
    makefile = (ROOT / "Makefile").read_text()
    for var, value in re.findall(r"^(\w+) \?= (.+)$", makefile, flags=re.M):
        makefile = makefile.replace(f"$({var})", value.strip())  # the Makefile's own defaults
    texts = {"docker-compose.yml": (ROOT / "docker-compose.yml").read_text(), "Makefile": makefile}
    for name, text in texts.items():
        for line in re.findall(r"cddae ([^\n&]+)", text):
            words = shlex.split(line)
            if words and not words[0].startswith("-") and words[0] != "=":
                found.append((name, words))
    return found


INVOCATIONS = _invocations()


def test_every_deployment_file_calls_cddae() -> None:
    assert {name for name, _ in INVOCATIONS} == {"Dockerfile", "docker-compose.yml", "Makefile"}
    commands = {words[0] for _, words in INVOCATIONS}
    assert {"serve", "data", "train", "export", "retrain"} <= commands


@pytest.mark.parametrize(
    ("source", "words"), INVOCATIONS, ids=[" ".join(w) for _, w in INVOCATIONS]
)
def test_invocation_parses(source: str, words: list[str]) -> None:
    build_parser().parse_args(words)  # argparse exits (fails the test) on an unknown flag
