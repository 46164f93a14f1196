"""The house's layering, read from the source's import statements (every one: module level,
inside functions, under ``if TYPE_CHECKING``), so a back-stair shows even where it is imported
lazily. A lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ("wsis", "pipelines") for p in sorted((ROOT / pkg).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Each module of wsis and pipelines -> the modules of wsis and pipelines it imports."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                deps.add(target)
                deps.update(f"{target}.{alias.name}" for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def below(graph: dict[str, set[str]], prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in graph.items() if m == prefix or m.startswith(prefix + ".")}


def test_dataset_readers_do_not_import_the_review_package():
    """wsis.data reads datasets; wsis.review sits above it (it reads datasets too). The polygon
    check both need lives below both, in wsis.geometry."""
    graph = import_graph()
    upward = {m: sorted(d for d in deps if d.startswith("wsis.review"))
              for m, deps in below(graph, "wsis.data").items()}
    assert {m: d for m, d in upward.items() if d} == {}


def test_geometry_is_a_leaf():
    assert import_graph()["wsis.geometry"] == set()


def test_the_review_package_uses_the_shared_polygon_check():
    from wsis import geometry
    from wsis.data import coco
    from wsis.review import polygons
    assert coco.check_polygon is geometry.check_polygon is polygons.check_polygon
    assert polygons.shoelace is geometry.shoelace


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    """pipelines.runner imported Stage from pipelines.engine, which imports the runner: Stage
    now lives below both, in pipelines.stage."""
    assert cycles(import_graph()) == []


def test_the_engine_still_exports_the_stage_types():
    from pipelines import engine, runner, stage
    assert engine.Stage is stage.Stage is runner.Stage and engine.ImageInputs is stage.ImageInputs
