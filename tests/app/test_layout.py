"""The layers of ``app/``, checked from the imports so that the folders keep telling the truth.

Layers, lowest first (README "Map of the code"):
- foundation: ``app`` itself, ``config``, ``contract``, ``logs``, ``metrics``, ``observe``, ``startup`` and the
  transport-neutral ``app.v2`` (request model, errors, names);
- ``app.engine``: batching and running models; no transport, no web framework;
- front ends ``app.http`` (and ``app.grpc``) and ``app.processes``: each uses the engine, none
  uses another;
- composition: ``app.server``, ``app.__main__``, ``app.cli``, ``app.testing`` wire the others
  together.

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

FOUNDATION = {"app", "app.config", "app.contract", "app.logs", "app.metrics", "app.observe", "app.startup"}
COMPOSITION = {"app.server", "app.__main__", "app.cli", "app.testing"}
FRONT_ENDS = ("app.http", "app.grpc", "app.processes")
# Third-party packages that belong to a transport: never below the front ends.
TRANSPORT_LIBRARIES = {"fastapi", "starlette", "uvicorn", "httptools", "h11", "grpc", "grpc_health",
                       "grpc_reflection", "httpx", "swagger_ui"}


def layer(module: str) -> str:
    if module in FOUNDATION or module == "app.v2" or module.startswith("app.v2."):
        return "foundation"
    if module in COMPOSITION:
        return "composition"
    for pkg in ("app.engine", *FRONT_ENDS):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    raise AssertionError(f"{module} belongs to no layer: add it to one (tests/app/test_layout.py)")


ALLOWED: dict[str, set[str]] = {
    "foundation": {"foundation"},
    "app.engine": {"foundation", "app.engine"},
    **{pkg: {"foundation", "app.engine", pkg} for pkg in FRONT_ENDS},
    "composition": {"foundation", "app.engine", *FRONT_ENDS, "composition"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Each module of the package at ``root`` and every module it imports (``app.*`` resolved to
    modules where ``from pkg import mod`` names one; third-party ones by their top-level name)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {m if m.split(".")[0] == root.name else m.split(".")[0] for m in found}
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, deps in sorted(graph.items()):
        own = layer(module)
        for dep in sorted(deps):
            if dep.split(".")[0] != "app":
                if dep in TRANSPORT_LIBRARIES and own in {"foundation", "app.engine"}:
                    problems.append(f"{module} ({own}) imports the transport library {dep}")
                continue
            if layer(dep) not in ALLOWED[own]:
                problems.append(f"{module} ({own}) imports {dep} ({layer(dep)})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among the package's own modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_follows_the_layers() -> None:
    problems = violations(imports(APP))
    assert not problems, "layer rules broken:\n" + "\n".join(problems)


def test_app_has_no_import_cycles() -> None:
    found = cycles(imports(APP))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_engine_never_imports_a_transport_or_a_front_end() -> None:
    """The rule the layering exists for, spelled out: what the engine reaches."""
    graph = imports(APP)
    reached = {dep for module, deps in graph.items() if layer(module) == "app.engine" for dep in deps}
    assert not reached & TRANSPORT_LIBRARIES
    assert not {d for d in reached if d.startswith(("app.http", "app.grpc", "app.processes", "app.server"))}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"app.engine.batcher": {"fastapi"}}, "imports the transport library fastapi"),
        ({"app.engine.batcher": {"app.http.codec"}}, "app.engine.batcher (app.engine) imports app.http.codec"),
        ({"app.v2.errors": {"app.engine.model"}}, "app.v2.errors (foundation) imports app.engine.model"),
        ({"app.processes.remote": {"app.http.state"}}, "app.processes.remote (app.processes) imports app.http.state"),
    ],
)
def test_the_checks_catch_a_broken_rule(edit: dict[str, set[str]], expected: str) -> None:
    """The checker itself can fail: a forbidden edge added to the real graph is reported."""
    graph = imports(APP)
    for module, deps in edit.items():
        graph[module] = graph[module] | deps
    assert any(expected in p for p in violations(graph))


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = imports(APP)
    graph["app.v2.names"] = graph["app.v2.names"] | {"app.v2.request"}
    graph["app.v2.request"] = graph["app.v2.request"] | {"app.v2.names"}
    assert ["app.v2.names", "app.v2.request"] in cycles(graph)
