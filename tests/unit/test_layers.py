"""The layers the folders of lib/lookalike show are the layers its imports have.

Read from the source with ``ast``, not by importing: every import counts, at module level or inside
a function (a function-level import is still a dependency, only a later one), ``import
lookalike.x`` and ``from lookalike.x import y`` alike, relative imports resolved.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "lib"
MAX_LINES = 450

# The config package is one unit whatever its inside looks like: its own modules may import each
# other in any order, and the rest of lookalike sees one bottom-layer module.
ONE_UNIT = ("lookalike.config",)

BOTTOM = {"errors", "schemas", "progress", "runinfo", "config", "terminal"}
# unit -> the units it may import. A unit is a folder (io, embed, ...) or a top-level module.
# Storage (io) at the bottom of the stages; publish commits Iceberg tables through iceberg and io,
# and io reads what publish wrote without importing it (io/current.py); the stages use both; tools read what the stages
# wrote; jobs, the entry points, sit on top of everything and nothing imports them.
ALLOWED: dict[str, set[str]] = {
    "lookalike": set(),  # the package itself: __version__
    "errors": set(),
    "terminal": set(),  # control characters escaped for terminals and logs
    "schemas": {"errors"},
    "progress": {"errors"},
    "runinfo": {"errors"},
    "config": {"errors", "schemas"},
    "io": BOTTOM,
    "iceberg": BOTTOM | {"io"},  # catalogs, commits and retention through pyiceberg
    "publish": BOTTOM | {"io", "iceberg"},
    "embed": BOTTOM | {"io", "publish"},
    "neighbours": BOTTOM | {"io", "publish"},
    "duplicates": BOTTOM | {"io", "publish", "neighbours"},
    "hybrid": BOTTOM | {"io", "publish", "neighbours"},  # behaviour blended with pictures
    "tools": BOTTOM | {"io", "publish", "embed", "neighbours", "duplicates", "hybrid"},
    "readers": {"tools"},  # the stable public path of tools.readers
    "jobs": BOTTOM | {"lookalike", "io", "publish", "embed", "neighbours", "duplicates", "hybrid", "tools"},
}


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of lib/lookalike."""
    found = {}
    for path in sorted((LIB / "lookalike").rglob("*.py")):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def unit_of(name: str) -> str:
    """The module as the graph sees it: a module of a ONE_UNIT package is that package."""
    for unit in ONE_UNIT:
        if name == unit or name.startswith(unit + "."):
            return unit
    return name


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(module, line) for every lookalike module that ``name`` imports, anywhere in its file."""

    def existing(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import module`` depends on that module; ``from module import name``
            # on the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "lookalike" or target.startswith("lookalike."):
                module = existing(target)
                if module is not None:
                    found.append((module, node.lineno))
    return found


@functools.cache
def graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: where, as 'lib/lookalike/x.py:12'}."""
    known = modules()
    edges: dict[str, dict[str, str]] = {unit_of(name): {} for name in known}
    for name, path in known.items():
        source = unit_of(name)
        for target, line in imported(name, path, known):
            target = unit_of(target)
            if target != source:
                edges[source].setdefault(target, f"{path.relative_to(LIB.parent)}:{line}")
    return edges


def cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_loop(component, edges) for component in components]


def _loop(component: list[str], edges: dict[str, dict[str, str]]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first within it)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node]):
                if nxt == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(came_from[chain[-1]])
                    return [start, *reversed(chain[:-1]), start]
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def chain_text(chain: list[str], edges: dict[str, dict[str, str]]) -> str:
    steps = [f"{a} -> {b} ({edges[a][b]})" for a, b in zip(chain, chain[1:], strict=False)]
    return "\n    ".join(steps)


def test_no_import_cycle_between_modules():
    edges = graph()
    found = cycles(edges)
    assert not found, "import cycles (module-level and function-level imports):\n" + "\n".join(
        f"  {' -> '.join(chain)}\n    {chain_text(chain, edges)}" for chain in found
    )


def test_folders_import_only_the_layers_below():
    edges = graph()
    layers = {layer_of(name) for name in edges}
    assert layers <= set(ALLOWED), f"add these to ALLOWED with the layers they may import: {layers - set(ALLOWED)}"
    wrong = sorted(
        f"{source} imports {target} ({where}): {layer_of(source)} may not import {layer_of(target)}"
        for source, targets in edges.items()
        for target, where in targets.items()
        if layer_of(source) != layer_of(target) and layer_of(target) not in ALLOWED[layer_of(source)]
    )
    assert not wrong, "imports against the layers:\n  " + "\n  ".join(wrong)


def test_allowed_layers_have_no_cycle():
    """The table itself must be a layering: no two units may import each other, even indirectly."""
    table = {unit: {other: "ALLOWED" for other in allowed} for unit, allowed in ALLOWED.items()}
    assert not cycles(table)


def test_no_module_is_longer_than_the_limit():
    long = sorted(
        f"{path.relative_to(LIB.parent)}: {len(path.read_text(encoding='utf-8').splitlines())} lines"
        for path in modules().values()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    )
    assert not long, f"modules over {MAX_LINES} lines (split them by purpose):\n  " + "\n  ".join(long)


def test_the_checks_see_function_level_imports_and_report_a_readable_cycle():
    edges = {"a": {"b": "a.py:3"}, "b": {"c": "b.py:9"}, "c": {"a": "c.py:40"}, "d": {"a": "d.py:1"}}
    (chain,) = cycles(edges)
    assert chain == ["a", "b", "c", "a"]
    assert chain_text(chain, edges) == "a -> b (a.py:3)\n    b -> c (b.py:9)\n    c -> a (c.py:40)"
    known = modules()
    # hardware.py asks openvino whether it is installed inside a function: the graph sees it.
    assert "lookalike.embed.openvino.installed" in graph()["lookalike.embed.hardware"]
    assert any(line > 1 for _, line in imported("lookalike.embed.hardware", known["lookalike.embed.hardware"], known))
