"""No import circle among our modules and no private name taken across modules (issue 21 item
2: the GPU stage's ``scene`` <-> ``stage`` loop and its borrowed ``_largest_chunk``), by the AST
scan of ``test_layering`` (imports at any depth, inside functions too). Each check is also run
on a planted violation, to show it can fail."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.unit.test_layering import PACKAGES, ROOT, imported_names, module_name


def graph(root: Path) -> dict[str, set[str]]:
    """Our module -> the modules of ours it imports (a name imported from a module counts as that module)."""
    paths = [p for pkg in PACKAGES if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(p, root): p for p in paths}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {m for _, m in imported_names(path, root) if m in modules and m != name}
        edges[name] = {t for t in targets if not (modules[t].name == "__init__.py" and t in name)}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def private_imports(root: Path) -> list[str]:
    """``from our.module import _name``: a private name taken across modules."""
    bad = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                    bad += [f"{path.relative_to(root)}:{node.lineno}: {node.module}.{a.name}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    return bad


#: private names another module may import (none: one key path removed the last three)
KNOWN_PRIVATE: set[str] = set()


def test_no_import_circle_and_no_private_import_in_the_code():
    assert circles(graph(ROOT)) == []
    assert {re.sub(r":\d+:", ":", p) for p in private_imports(ROOT)} <= KNOWN_PRIVATE
    assert not [p for p in private_imports(ROOT) if p.startswith("workers/")]


def test_the_checks_can_fail(tmp_path):
    for rel, text in {
        "workers/__init__.py": "",
        "workers/gpu/__init__.py": "",
        "workers/gpu/a.py": "from workers.gpu.b import helper\n",
        "workers/gpu/b.py": "def late():\n    from workers.gpu.a import _private\n",  # inside a function
        "workers/gpu/c.py": "import workers.gpu.a\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert circles(graph(tmp_path)) == [["workers.gpu.a", "workers.gpu.b"]]
    assert private_imports(tmp_path) == ["workers/gpu/b.py:2: workers.gpu.a._private"]
