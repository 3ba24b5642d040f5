"""No module of the pack imports a module that imports it back, directly or around a longer circle, counting imports
inside functions and under TYPE_CHECKING (a circle there is coupling hidden, not gone)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("omni_core", "nodes")


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every pack module `name` imports anywhere in its file (a name imported from a package counts as the package,
    or as its submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (strongly connected components above one)."""
    reach = {name: set() for name in graph}
    for start in graph:
        pending = list(graph[start])
        while pending:
            current = pending.pop()
            if current not in reach[start]:
                reach[start].add(current)
                pending.extend(graph[current])
    groups = {frozenset([a, *(b for b in reach[a] if a in reach[b])]) for a in graph if a in reach[a]}
    return sorted(sorted(group) for group in groups)


def test_no_module_imports_one_that_imports_it_back():
    modules = module_files()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["omni_core.pipeline"] >= {"omni_core.chat", "omni_core.reflection"}  # the graph sees the imports
    assert import_circles(graph) == []


def test_a_circle_is_found_also_under_type_checking(tmp_path):
    """The detector itself: a TYPE_CHECKING import back to the importer is a circle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import OmniGen2\n"
    (tmp_path / "chat.py").write_text(source)
    modules = {"omni_core.chat": tmp_path / "chat.py", "omni_core.pipeline": tmp_path / "pipeline.py"}
    assert imported_modules("omni_core.chat", modules["omni_core.chat"], modules) == {"omni_core.pipeline"}
