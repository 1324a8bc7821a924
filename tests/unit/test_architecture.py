"""The package's shape, read from its source: no import cycle, no private name crossing modules,
private Ray APIs in ``_ray.py`` only, and every backend holding to one contract."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "cellforge"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in the file — inside functions
    too, so a lazy import cannot hide a cycle."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in _imports(name, path):
            if not module.startswith("cellforge"):
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]  # from pkg import submodule
            if len(targets) < len(names) or not names:
                targets.append(module)
            graph[name] |= {t for t in targets if t in MODULES and t != name}
    return graph


def test_no_import_cycle_inside_cellforge():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_across_modules():
    bad = []
    for name, path in MODULES.items():
        for module, names, line in _imports(name, path):
            if module.startswith("cellforge"):
                bad += [f"{path.name}:{line} imports {n} from {module}" for n in names
                        if n.startswith("_") and f"{module}.{n}" not in MODULES]
    assert not bad, "\n".join(bad)


def test_no_private_attribute_of_another_object():
    """``obj._x`` is only for ``self``/``cls`` or a private name of the same module (and Ray's own
    modules, in _ray.py): the serving engine once read ``model._net`` and ``preprocessor._index``."""
    bad = []
    for name, path in MODULES.items():
        if name == "cellforge._ray":
            continue
        tree = ast.parse(path.read_text())
        own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in own
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert not bad, "\n".join(bad)


def test_private_ray_apis_only_in_one_module():
    bad = []
    for name, path in MODULES.items():
        if name == "cellforge._ray":
            continue
        for module, names, line in _imports(name, path):
            if module.startswith("ray") and any(p.startswith("_") for p in module.split(".") + names):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} {module} {names}")
    assert not bad, "private Ray APIs outside cellforge/_ray.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["numpy", "torch", "tensorflow"])
def test_every_backend_holds_to_the_contract(name):
    from cellforge.backends import Backend, get_backend

    backend = get_backend(name)
    assert isinstance(backend, Backend), f"{name} lacks {[a for a in Backend.__annotations__ if not hasattr(backend, a)]}"
    assert (backend.Fitter is not None) == backend.TRAINS


def test_unknown_backend_names_the_known_ones():
    from cellforge.backends import get_backend

    with pytest.raises(ValueError, match="known: .*'numpy'"):
        get_backend("jax")


def test_public_api_imports_fast_without_ray_or_frameworks():
    """``import cellforge`` pulls in neither Ray nor torch nor TensorFlow (those load when used)."""
    import subprocess
    import sys

    code = ("import sys, cellforge, cellforge.cli; heavy = [m for m in ('ray', 'torch', 'tensorflow', 'keras') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_modules_import_in_any_order():
    for name in sorted(MODULES):
        if name.startswith("cellforge.backends.keras"):
            continue  # imports TensorFlow: covered by the backend contract test
        importlib.import_module(name)


def test_test_modules_have_unique_basenames():
    """pytest imports tests by basename (rootdir mode): tests/unit/x.py and tests/integration/x.py
    clash at collection in a fresh clone, while a warm checkout's caches can hide it."""
    tests = PACKAGE.parents[1] / "tests"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
