"""No import circles in the package: a module reached again through its own imports works only in one
import order (the other finds a half-initialised module), and a circle hides which side owns a fact."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_graph() -> dict[str, set[str]]:
    """Every maskdpo module (kernels/ as maskdpo.kernels) -> the maskdpo modules it imports, at top
    level or inside functions (a deferred import still closes a circle, it only hides it)."""
    files = {}
    for folder, package in (("maskdpo", "maskdpo"), ("kernels", "maskdpo.kernels")):
        for file in (ROOT / folder).rglob("*.py"):
            parts = [package, *file.relative_to(ROOT / folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            files[name] = (file, name if is_package else name.rpartition(".")[0])
    graph = {}
    for name, (file, package) in files.items():
        deps = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import layout` imports the module layout, not the package
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in files else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    graph = module_graph()
    assert "maskdpo.train.checkpointer" in graph and "maskdpo.kernels.sequence_logps" in graph  # the walk saw both trees
    assert "maskdpo.train.errors" in graph["maskdpo.train.validate"]  # function-level imports are followed
    assert circles(graph) == []
