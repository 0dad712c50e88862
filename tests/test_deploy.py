"""The Dockerfile, the container scripts (docker/*.sh, which compose runs) and the Makefile call
the same `cddae` commands the tests run: every invocation they hold must parse with the real
command-line parser. (`make compose-test` runs them for real.)"""

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
    texts = {"Makefile": makefile}
    for script in sorted((ROOT / "docker").glob("*.sh")):
        texts[f"docker/{script.name}"] = _with_defaults(script.read_text().replace("\\\n", " "))
    for name, text in texts.items():
        for line in re.findall(r"(?:^|[\s/])cddae ([a-z][^\n&|;#`]*)", text, flags=re.M):
            words = [w for w in shlex.split(line) if not re.match(r"^\d?>", w)]  # redirections
            if words and not words[0].startswith("-") and words[0] != "=":
                found.append((name, words))
    return found


def _with_defaults(script: str) -> str:
    """A shell script with its variables replaced by their defaults (`x="${ENV:-d}"` → d)."""
    values = dict(re.findall(r'^(\w+)="\$\{\w+:-([^}]*)\}"', script, flags=re.M))
    script = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", script)
    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), m.group(0)), script)


INVOCATIONS = _invocations()


def test_every_deployment_file_calls_cddae() -> None:
    sources = {name for name, _ in INVOCATIONS}
    assert {"Dockerfile", "Makefile", "docker/init.sh", "docker/retrain.sh"} <= sources
    commands = {words[0] for _, words in INVOCATIONS}
    assert {"serve", "data", "train", "export", "retrain", "models"} <= commands


def test_compose_runs_the_container_scripts() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for script in ("init", "retrain", "scheduler"):
        assert f"docker/{script}.sh /usr/local/bin/cddae-{script}" in dockerfile
    assert '["cddae-init"]' in compose and "CDDAE_RETRAIN_SCHEDULE" in compose


@pytest.mark.parametrize(
    ("source", "words"), INVOCATIONS, ids=[" ".join(w) for _, w in INVOCATIONS]
)
def test_invocation_parses(source: str, words: list[str]) -> None:
    build_parser().parse_args(words)  # argparse exits (fails the test) on an unknown flag
