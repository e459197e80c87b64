"""The import structure of relay/: every module imports alone, no import loops, and no import
from a floor down below to one above it.

Modules are found by walking the package, so a new one is checked as soon as it exists; one
that is on no floor fails the test until it is given one. The floors follow the flow of the
data (ARCHITECTURE.md): helpers, settings, the policy, the spool, the sources, the export
stage, the relay's own face, and the commands. A module may import its own floor or lower.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "relay"

# Lowest first. An entry names a module, or a package and everything in it.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("helpers", ("relay", "relay.strict_yaml", "relay.secrets", "relay.otlp", "relay.wire", "relay.compression",
                 "relay.mapping", "relay.selfmetrics", "relay.logs", "relay.identity", "relay.allocator",
                 "relay.systemd", "relay.listener")),
    # TLS contexts are built from the settings' own types.
    ("settings", ("relay.config", "relay.source_settings", "relay.tls")),
    ("policy", ("relay.policy",)),
    ("spool", ("relay.spool",)),
    ("sources", ("relay.sources",)),
    ("export", ("relay.export",)),
    ("face", ("relay.status", "relay.server", "relay.pipeline", "relay.app")),
    ("commands", ("relay.ingest", "relay.cli", "relay.devrun")),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> int | None:
    """The floor of a module: its own entry, else the package entry nearest to it."""
    best: tuple[int, int] | None = None  # (length of the entry matched, floor)
    for level, (_, entries) in enumerate(FLOORS):
        for entry in entries:
            # The root package is an entry of its own: it must not claim every module under it.
            matches = module == entry or (entry != "relay" and module.startswith(entry + "."))
            if matches and (best is None or len(entry) > best[0]):
                best = (len(entry), level)
    return None if best is None else best[1]


def imports_of(module: str) -> set[str]:
    """The relay modules `module` imports anywhere in its text: at the top, inside functions
    (lazy imports still make an arrow) and under TYPE_CHECKING (so does a type-only one)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                # `from relay.policy import shapes` imports a module; `from relay.policy import
                # Policy` imports the package.
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return {name for name in found if name in MODULES and name != module}


def _graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES}


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_package_is_walked_and_the_graph_is_read() -> None:
    """The walk finds modules at every depth, and the reader sees each kind of import."""
    assert {"relay", "relay.config", "relay.policy", "relay.policy.engine", "relay.sources.base"} <= set(MODULES)
    assert "relay.policy.shapes" in imports_of("relay.policy.engine")  # from relay.policy import shapes
    assert "relay.policy" in imports_of("relay.export.shipper")  # from relay.policy import Policy
    assert "relay.mapping" in imports_of("relay.config")


def test_every_module_is_on_a_floor() -> None:
    assert [m for m in MODULES if floor_of(m) is None] == [], "add these modules to FLOORS"


def test_no_import_loops() -> None:
    assert _loops(_graph()) == []


def test_no_import_from_a_lower_floor_to_a_higher_one() -> None:
    upward = []
    for module, imported in _graph().items():
        here = floor_of(module)
        for target in sorted(imported):
            there = floor_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} ({FLOORS[here][0]}) imports {target} ({FLOORS[there][0]})")
    assert upward == []


def test_the_loop_and_floor_checks_catch_what_they_guard() -> None:
    """The two checks above, on made-up graphs: a loop and an upward arrow are both found."""
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _loops({"a": {"b"}, "b": set()}) == []
    policy, export = floor_of("relay.policy"), floor_of("relay.export.shipper")
    assert policy is not None and export is not None and policy < export
    assert floor_of("relay.policy.engine") == policy
    assert floor_of("relay.policy_cli") != floor_of("relay.policy")  # a prefix is not a package
    assert floor_of("relay.not_a_module_anyone_wrote") is None


# A __main__ module runs its program when imported: it is in the graph above, not imported here.
@pytest.mark.parametrize("module", [m for m in MODULES if not m.endswith(".__main__")])
def test_each_module_imports_alone_without_warnings(module: str) -> None:
    p = subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
