"""The layout keeps its promises (docs/architecture.md): no import circle, lower rooms never import higher ones.

Every ``import`` in ``src/ays`` is read from the source (module level and inside
functions alike, since a lazy import is still a dependency), resolved to the module
it names, and checked against the order of the rooms below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "ays"

#: Rooms from the lowest to the highest; a room may import only rooms before it.
ROOMS = [
    "_callable", "validate", "seeds", "data", "distributed", "device", "io", "noise", "schedules", "denoisers",
    "solvers", "sample", "analysis", "klub", "problems", "metrics", "nets", "model_file", "plot", "train", "optimize",
    "evaluate", "integrations", "cli", "__main__",
]  # fmt: skip
RANK = {room: i for i, room in enumerate(ROOMS)}

#: Source files allowed above ~450 lines, each with the reason stated at its top.
LONG_FILES_LIMIT = 480


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The modules a ``from ... import ...`` statement in ``module`` depends on."""
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)  # `from pkg import submodule` depends on the submodule
    return out


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, node))
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # the package root `ays` is no room


def test_every_room_has_a_place_in_the_order() -> None:
    rooms = {_room(m) for m in MODULES} - {None}
    assert rooms <= set(RANK), f"rooms missing from ROOMS: {sorted(rooms - set(RANK))}"


def test_the_order_is_the_one_the_docs_state() -> None:
    # docs/architecture.md states the order in one line of `room` → `room` → ...
    text = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index("`validate` →")
    stated = re.findall(r"`([a-z_]+)`", text[start : text.index("\n\n", start)])
    assert stated == [r for r in ROOMS if not r.startswith("_")]


def test_the_resolver_sees_real_edges() -> None:
    # The checks below could pass vacuously if imports were not found at all.
    assert "ays.validate" in GRAPH["ays.schedules"]
    assert "ays.solvers" in GRAPH["ays.sample"]
    assert any(m.startswith("ays.klub") for m in GRAPH["ays.optimize.dp"])


def test_lower_rooms_never_import_higher_ones() -> None:
    wrong = []
    for module, deps in GRAPH.items():
        room = _room(module)
        if room is None:
            continue
        for dep in deps:
            other = _room(dep)
            if other is not None and other != room and RANK[other] > RANK[room]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "lower room imports a higher one:\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    # Tarjan's strongly connected components; any component of 2+ modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w == "ays":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_files_state_why(module: str) -> None:
    text = MODULES[module].read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines > LONG_FILES_LIMIT:
        head = "\n".join(text.splitlines()[:40]).lower()
        assert "long because" in head, f"{MODULES[module]} has {lines} lines and does not say why at its top"
