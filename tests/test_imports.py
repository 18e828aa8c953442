"""The package's import graph (issue 15): no module imports, directly or through others, a module that imports
it back, counting imports inside functions too (a lazy import only hides a cycle until it runs)."""

from __future__ import annotations

import ast
from pathlib import Path

from testutils import REPO

# the installed package's layout (setup.cfg package_dir): datamodules/ and callbacks/ are subpackages
ROOTS = {"slowfast_vgen": REPO / "src" / "slowfast_vgen", "slowfast_vgen.datamodules": REPO / "datamodules",
         "slowfast_vgen.callbacks": REPO / "callbacks"}


def modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:  # the module a dotted name lives in (a.b.C -> a.b)
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    prefix = package
                    for _ in range(node.level - 1):
                        prefix = prefix.rpartition(".")[0]
                    base = f"{prefix}.{base}" if base else prefix
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                dep = owner(target) if target.startswith("slowfast_vgen") else None
                if dep and dep != name and not name.startswith(dep + "."):  # a package's own __init__ is no cycle
                    graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

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


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "slowfast_vgen.temp_lora" in graph["slowfast_vgen.generation.long_video"]  # a module-level import
    assert "slowfast_vgen.experiment" in graph["slowfast_vgen.demo"]
    assert any(graph[m] for m in graph if m.startswith("slowfast_vgen.datamodules."))


def test_no_import_cycles_inside_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def package_of(module: str) -> str:
    """slowfast_vgen.a.b -> slowfast_vgen.a (a subpackage, or a top-level module such as slowfast_vgen.cli)."""
    return ".".join(module.split(".")[:2])


def test_no_cycles_between_the_packages():
    """The layers: simulators, models, diffusion, temp_lora < generation < systems < datamodules < evaluation and the
    commands; a package that imports another is never imported back by it, through any module."""
    graph: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        graph.setdefault(package_of(module), set()).update(package_of(d) for d in deps if package_of(d) != package_of(module))
    for deps in list(graph.values()):
        for d in deps:
            graph.setdefault(d, set())
    found = cycles(graph)
    assert not found, "package cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_shard_readers_never_import_the_data_tools():
    """datamodules/shards (the training path) < datamodules/prep (the `sfvgen data` tools), lazy imports included."""
    graph = import_graph()
    shards, prep = "slowfast_vgen.datamodules.shards", "slowfast_vgen.datamodules.prep"
    assert any(m.startswith(shards + ".") for m in graph) and any(m.startswith(prep + ".") for m in graph)
    wrong = {m: sorted(d for d in deps if d.startswith(prep)) for m, deps in graph.items() if m.startswith(shards)}
    assert not any(wrong.values()), wrong
