"""Import structure, read from the source with `ast` (nothing is imported): library folders never
reach into tools/, and the project's modules import each other without a cycle, counting late
imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.train_helpers import ROOT

LIBRARY = ("model", "data", "train", "generate", "evaluation")
PACKAGES = (*LIBRARY, "tools")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(node: ast.AST, here: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load: the module, and for `from m import x` also m.x
    (x may be a submodule, as in `from train import checkpoint`). Relative imports are resolved."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = here.split(".") if is_package else here.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere: a late import inside a function still
    ties the two modules together (the old tokenizer circle was one), so it counts."""
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = (t for node in ast.walk(tree) for t in imported_names(node, name, path.name == "__init__.py"))
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that returns to its start, or None (iterative three-colour DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, its = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(its[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                its.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                its.append(iter(sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a2"}, "a2": {"b"}, "b": {"b"}}) == ["b", "b"]


def test_relative_and_submodule_imports_resolve():
    tree = ast.parse("from . import sibling\nfrom .x import y\nfrom train import checkpoint as ckpt\n")
    names = [imported_names(n, "pkg.mod", False) for n in tree.body]
    assert names == [["pkg", "pkg.sibling"], ["pkg.x", "pkg.x.y"], ["train", "train.checkpoint"]]


@pytest.mark.parametrize("folder", LIBRARY)
def test_library_never_imports_tools(folder):
    """tools/ are command lines over the library; anywhere in a library file, even a late import
    inside a function, an import of tools/ would make the library depend on its own CLIs."""
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in imported_names(node, name, path.name == "__init__.py"):
                if target == "tools" or target.startswith("tools."):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}")
    assert offenders == []


def test_project_modules_import_without_a_cycle():
    modules = project_modules()
    assert {"model.tokenizer", "model.tokenizer_base", "data.tokenizer_training", "tools.train_tokenizer"} <= set(modules)
    graph = import_graph(modules)
    assert "model.tokenizer_base" in graph["model.tiktoken_tokenizer"]  # the graph sees real edges
    assert find_cycle(graph) is None
