"""The package's import graph, read from the source (AST): arrows point down the pipeline, no circles.

Each stage package has a level; a module may import from its own package or from a package of a lower
level, never from one at its level or above (../shared/ARCHITECTURE.md, "Rules of the house"). The CLI
is the top; nothing below it prints.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sparse_trt"

LEVELS = {
    "core": 0,
    "data": 1,
    "models": 2,
    "prune": 3,
    "quantize": 4,
    "eval": 5,
    "export": 5,
    "plan": 6,
    "recover": 6,
    "engine": 7,
    "serve": 8,
    "bench": 9,
    "cli": 10,
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _imported_packages(path: Path) -> set[str]:
    """Top-level sparse_trt packages that ``path`` imports (absolute or relative, at any depth in the file)."""
    module = list(path.relative_to(PKG.parent).with_suffix("").parts)
    here = module if path.name == "__init__.py" else module[:-1]  # the package the file is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sparse_trt" and len(parts) > 1:
                found.add(parts[1])
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PKG.rglob("*.py"):
        src = _package_of(path)
        if src:
            edges[src] |= _imported_packages(path) - {src}
    return edges


def test_every_package_has_a_level():
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LEVELS), f"give new packages a level: {sorted(packages ^ set(LEVELS))}"


def test_imports_point_down_the_pipeline():
    wrong = sorted(f"{src} -> {dst}" for src, dsts in _graph().items() for dst in dsts
                   if dst in LEVELS and LEVELS[dst] >= LEVELS[src])
    assert not wrong, f"imports sideways or up the pipeline: {wrong}"


def test_no_import_circle_between_packages():
    edges = _graph()
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt not in seen and (cycle := visit(nxt, [*stack, node])):
                return cycle
        seen[node] = 2
        return None

    for start in sorted(edges):
        if start not in seen:
            cycle = visit(start, [])
            assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_nothing_below_the_cli_prints():
    offenders = []
    for path in PKG.rglob("*.py"):
        if _package_of(path) in ("cli", "") or "python_models" in path.parts:
            continue  # Triton's Python-backend models run inside the server, not in this process
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not offenders, offenders
