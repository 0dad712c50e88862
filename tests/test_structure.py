"""The tree's shape, checked: rooms that import one way, no circles, small folders.

The graph is read from the source (every import, lazy ones in functions included; only
`if TYPE_CHECKING:` blocks are left out, since they never run).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "training")
MAX_MODULES_PER_FOLDER = 12

# Rank of each room: a module may import its own room and rooms of a lower rank only.
RANKS = {
    "service.bundle": 0, "service.features": 0, "service.item_path": 0, "service.ids": 0,
    "service.config": 0, "service.telemetry": 0, "service.experiment": 0,
    "service.state": 1,
    "service.serving": 2,
    "service.api": 3,
    "training.names": 4,
    "training.data": 5,
    "training.evaluation": 6,
    "training.models": 7,
    "training.jobs": 8,
    "training.experiments": 9,
    "training.cli": 10,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from a import b` counts as a.b where a.b is one)."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def room(name: str) -> str:
    return max((r for r in RANKS if name == r or name.startswith(r + ".")), key=len)


def test_every_module_belongs_to_a_room() -> None:
    homeless = [m for m in modules() if m not in PACKAGES and not any(
        m == r or m.startswith(r + ".") for r in RANKS)]  # fmt: skip
    assert not homeless, f"add these to a room in RANKS: {homeless}"


def against_layers(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} → {b}"
        for a, targets in edges.items()
        if a not in PACKAGES
        for b in targets
        if b not in PACKAGES and RANKS[room(b)] > RANKS[room(a)]
    )


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_rooms_import_only_downwards() -> None:
    wrong = against_layers(graph())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_circle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " → ".join(cycle or [])


def test_the_checks_see_what_they_look_for() -> None:
    """Both checks on made-up graphs: a check that cannot fail proves nothing."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    upward = {
        "service.state.store": {"service.api.routes"},
        "service.api.routes": {"service.bundle"},
    }
    assert against_layers(upward) == ["service.state.store → service.api.routes"]
    assert against_layers({"training.cli": {"service.api.server"}}) == []
    assert room("service.api.routes") == "service.api" and room("training.cli") == "training.cli"


def test_no_folder_holds_more_than_twelve_modules() -> None:
    counts: dict[Path, int] = defaultdict(int)
    for path in modules().values():
        if path.name != "__init__.py":
            counts[path.parent] += 1
    crowded = {str(folder.relative_to(ROOT)): n for folder, n in counts.items()}
    crowded = {folder: n for folder, n in crowded.items() if n > MAX_MODULES_PER_FOLDER}
    assert not crowded, crowded


def test_no_two_modules_share_a_name() -> None:
    """Two `recommender.py` meaning different things was how a newcomer got lost."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for name, path in modules().items():
        if path.name != "__init__.py":
            by_name[path.stem].append(name)
    assert not {stem: names for stem, names in by_name.items() if len(names) > 1}


def test_every_room_says_what_lives_there() -> None:
    for path in modules().values():
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), path
