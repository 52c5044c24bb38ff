"""The package's import graph has no cycles, counting imports inside functions (they run too, just later),
and importing any module does no work beyond defining names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "pipeline"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every pipeline module that `path` imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import pipeline.a.b` -> the deepest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None. Iterative DFS with colours."""
    colour = dict.fromkeys(graph, 0)
    for start in graph:
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour[child] == 1:
                    return path[path.index(child):] + [child]
                if colour[child] == 0:
                    colour[child] = 1
                    stack.append((child, iter(sorted(graph[child]))))
                    path.append(child)
                    break
            else:
                colour[node] = 2
                stack.pop()
                path.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def test_the_finder_sees_a_cycle_inside_functions():
    """The checker itself: a cycle closed only by an import inside a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = "def f():\n    from pipeline.x import y\n"
    path = ROOT / "tests" / "code" / "_probe_module.py"
    try:
        path.write_text(src)
        found = imports_of(path, "pipeline.z", {"pipeline", "pipeline.x", "pipeline.z"})
    finally:
        path.unlink()
    assert found == {"pipeline.x"}


def test_pipeline_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40  # every module was parsed
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_registry_and_the_pyfunc_import_mlflow():
    """MLflow is touched in one place (registry); the pyfunc class must subclass mlflow's PythonModel."""
    users = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                users.add(name)
    assert users == {"pipeline.registry", "pipeline.serving.pyfunc"}


# nn.Module files and the epoch loop are torch code through and through.
TORCH_MODULES = {"pipeline.training.fitting", "pipeline.training.losses", "pipeline.training.trainer",
                 "pipeline.training.weighting", "pipeline.training.optimizers",
                 "pipeline.training.hugepages"}


@pytest.mark.parametrize("name", sorted(modules()))
def test_importing_a_module_loads_no_heavy_library(name):
    """Importing any module (e.g. to build the CLI's --help or parse the DAG) pulls in no torch, mlflow, GX or
    airflow; those load inside the functions that use them. The pyfunc module is MLflow's by definition."""
    heavy = ["great_expectations", "airflow", "transformers", "lightgbm"]
    if name != "pipeline.serving.pyfunc":
        heavy.append("mlflow")
    if name not in TORCH_MODULES and not (name.startswith("pipeline.models.") and name != "pipeline.models"):
        heavy.append("torch")
    code = (f"import sys, importlib; importlib.import_module({name!r}); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {name} loaded {out.stdout.strip()}"
