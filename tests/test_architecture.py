"""The package's shape: no import cycles, and a trainer that names no method."""

import ast
import re
from pathlib import Path

from unified_rlhf import objectives

PACKAGE = Path(__file__).resolve().parents[1] / "unified_rlhf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Package modules `path` imports anywhere in it (top level or inside a function)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unified_rlhf"):
            found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the layers
    edges = {m: {t for t in ts if not (m.count(".") < t.count(".") and t.startswith(m + "."))}
             for m, ts in edges.items()}
    state, cycle = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycle.append(path + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycle, f"import cycle: {' -> '.join(cycle[0])}"


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    edges = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setattr(__import__(__name__), "graph", lambda: edges)
    try:
        test_no_import_cycles()
    except AssertionError as error:
        assert "a -> b -> a" in str(error)
    else:
        raise AssertionError("a two-module cycle went unnoticed")


def test_the_trainer_names_no_method():
    source = (PACKAGE / "trainer.py").read_text()
    named = [name for name in objectives.REGISTRY if re.search(rf"""["']{re.escape(name)}["']""", source)]
    assert not named, f"trainer.py names methods {named}: per-method behaviour belongs on the objective's record"
