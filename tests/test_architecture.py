"""The layering DESIGN.md promises, read off the source: one-way imports, no import cycles, and the
model config of a cell derived in one function."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gentron", "ablations", "eval", "reports", "slurm")
HARNESS = ("ablations", "eval", "reports", "slurm")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Project modules `path` imports, at any level (a lazy import inside a function still makes a
    cycle when it runs), resolving `from package import submodule`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_sees_real_imports():
    edges = graph()
    assert "gentron.config" in edges["gentron.generate"]
    assert "gentron.schema" in edges["slurm.launcher"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_any_package():
    assert cycles(graph()) == []


def test_the_library_imports_nothing_of_the_harness():
    edges = graph()
    upward = {(m, t) for m, targets in edges.items() if m.startswith("gentron") for t in targets
              if t.split(".")[0] in HARNESS}
    assert upward == set()


def test_the_model_config_is_built_in_one_function():
    """`GenTronConfig(...)` is constructed by the size registry only (gentron.config.resolve derives a
    cell's from it; a checkpoint's comes back through GenTronConfig.from_dict), and no other product
    module calls the registry with a cell's values."""
    constructs, registry_calls = set(), set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = ast.unparse(node.func)
                if callee.split(".")[-1] == "GenTronConfig":
                    constructs.add(name)
                if callee.split(".")[-1] == "model_config":
                    registry_calls.add(name)
    assert constructs <= {"gentron.sizes", "gentron.model"}, constructs
    assert registry_calls <= {"gentron.config", "gentron.sizes"}, registry_calls
