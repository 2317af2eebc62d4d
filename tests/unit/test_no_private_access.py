"""Objects talk through public verbs: no code in supervisor/ reaches another object's
private name (``other._x``), and no two modules share a file name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "supervisor"

#: ``x._name`` uses that cannot be avoided, as (module, expression) pairs, each with why.
KNOWN: frozenset[tuple[str, str]] = frozenset()

#: Underscore names that are documented public API: ``os._exit``, namedtuple's methods.
PUBLIC_PRIVATES = frozenset({"_exit", "_asdict", "_replace", "_fields"})


def private_accesses() -> list[str]:
    found: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            if name in PUBLIC_PRIVATES:
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            expr = f"{ast.unparse(base)}.{name}"
            if (rel, expr) in KNOWN:
                continue
            found.append(f"{rel}:{node.lineno}: {expr}")
    return found


def test_no_code_reaches_another_objects_private_names() -> None:
    assert private_accesses() == []


def test_no_two_modules_share_a_file_name() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py" and path.name != "__main__.py":
            by_name[path.name].append(path.relative_to(ROOT).as_posix())
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert shared == {}
