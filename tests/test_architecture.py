"""The layering of the package (DESIGN.md): imports point down, never in a circle; files and functions stay small."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lors"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path) -> set[str]:
    """The lors modules that ``name`` imports anywhere in its file (module level and inside functions)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = node.module or "" if node.level == 0 else ".".join(
                base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            out |= subs or ({target} & set(MODULES))
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names} & set(MODULES)
    return out - {name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def test_no_import_circle():
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH.get(todo.pop(), ()):
                if nxt == start:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    # package __init__ files re-export their submodules; a circle through one of them is not a circle of code
    circular = [m for m in GRAPH if not MODULES[m].name == "__init__.py" and reach(m)]
    assert not circular, circular


@pytest.mark.parametrize("layer,forbidden", [
    ("lors.nn", ("lors.apply", "lors.engine", "lors.tasks", "lors.models", "lors.data", "lors.cli", "lors.optim")),
    ("lors.apply", ("lors.engine", "lors.tasks", "lors.models", "lors.data", "lors.cli")),
    ("lors.engine", ("lors.models", "lors.data", "lors.tasks", "lors.cli")),
    ("lors.models", ("lors.engine", "lors.tasks", "lors.data", "lors.cli")),
    ("lors.tasks", ("lors.cli",)),
    ("lors.compression", ("lors.cli",)),  # the CLI enters the compression package; nothing climbs back
])
def test_imports_point_down(layer, forbidden):
    bad = {m: sorted(d for d in deps if d.startswith(forbidden)) for m, deps in GRAPH.items()
           if (m == layer or m.startswith(layer + "."))}
    assert not {m: d for m, d in bad.items() if d}


def test_files_and_functions_stay_small():
    long_files = {n: len(p.read_text().splitlines()) for n, p in MODULES.items() if len(p.read_text().splitlines()) > 400}
    assert not long_files
    long_functions = [f"{n}:{f.name} ({f.end_lineno - f.lineno + 1})" for n, p in MODULES.items()
                      for f in ast.walk(ast.parse(p.read_text()))
                      if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 80]
    assert not long_functions
    trainer = ast.parse(MODULES["lors.engine.trainer"].read_text())
    fit = next(f for f in ast.walk(trainer) if isinstance(f, ast.FunctionDef) and f.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 60
