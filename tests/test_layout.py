"""The package's shape stays easy to live in: imports point down the stages (README, Layout), no
import circles, short functions, a wiring-only pipeline, no test hooks in the product."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "streamer"
FOUNDATION = {"streamer", "streamer.arguments", "streamer.boxes", "streamer.config", "streamer.control", "streamer.errors",
              "streamer.frames", "streamer.logs", "streamer.presets", "streamer.uris"}
STAGES = ("inputs", "inference", "outputs")
MAX_FUNCTION_LINES = 60
MAX_PIPELINE_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The streamer modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamer"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("streamer")}
    return found & known


def layer(name: str) -> int:
    """0 foundation (and analytics: pure maths over its types), 1 a stage, 2 the service, 3 the tools,
    4 the command line."""
    if name in FOUNDATION:
        return 0
    group = name.split(".")[1]
    if group == "analytics":
        return 0
    return 1 if group in STAGES else {"service": 2, "tools": 3}.get(group, 4)


def test_imports_point_down_and_stages_do_not_import_each_other_sideways_or_back():
    trees = modules()
    wrong = []
    for name, tree in trees.items():
        for target in imports(tree, set(trees)):
            upward = layer(target) > layer(name)
            sideways = layer(name) == layer(target) == 1 and name.split(".")[1] != target.split(".")[1]
            later_stage = sideways and STAGES.index(target.split(".")[1]) > STAGES.index(name.split(".")[1])
            if upward or later_stage:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_no_import_circle():
    trees = modules()
    graph = {name: imports(tree, set(trees)) for name, tree in trees.items()}
    circles = []

    def visit(name: str, path: list[str]) -> None:
        for target in graph[name]:
            if target in path:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target])
        done.add(name)

    done: set[str] = set()
    for name in graph:
        if name not in done:
            visit(name, [name])
    assert circles == []


def test_functions_are_short_and_the_pipeline_only_wires():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {node.end_lineno - start + 1} lines")
    assert long == []
    assert len((PACKAGE / "service" / "pipeline.py").read_text().splitlines()) < MAX_PIPELINE_LINES


def test_no_test_hooks_in_the_product():
    hooks = [str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py") if "STREAMER_TEST_" in path.read_text()]
    assert hooks == []
