"""Import layering, checked two ways.

1. Statically: an AST scan of every module under shared/, models/, workers/, orchestrator/
   (imports at any depth, inside functions too, relative ones resolved, and
   ``importlib.import_module("...")`` with a literal name) against the allowed arrows:

       shared        -> nothing of ours
       models        -> shared
       workers/cpu   -> shared, models, workers (not workers/gpu)
       workers/gpu   -> shared, models, workers (not workers/cpu)
       workers       -> shared, models: the plumbing (Celery app, transport, feeder, metrics,
                        health...) never imports a tier, nor orchestrator; one exception, the
                        launcher (workers/launch.py), which starts each tier's worker
       orchestrator  -> anything

   The scanner is also run on planted violations in a synthetic tree, to show it can fail.
2. At run time (tests/integration/test_tier_imports.py): processes that must not carry the GPU
   stack are run in a subprocess and their ``sys.modules`` is read at exit.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PACKAGES = ("shared", "models", "workers", "orchestrator")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from workers import gpu` imports workers.gpu: count each name as a submodule too
            found += [(node.lineno, prefix)] + [(node.lineno, f"{prefix}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def layer(name: str) -> str | None:
    """shared | models | workers.cpu | workers.gpu | workers | orchestrator | None (third party)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] == "workers" and len(parts) > 1 and parts[1] in ("cpu", "gpu"):
        return f"workers.{parts[1]}"
    return parts[0]


FORBIDDEN = {
    "shared": {"models", "workers", "workers.cpu", "workers.gpu", "orchestrator"},
    "models": {"workers", "workers.cpu", "workers.gpu", "orchestrator"},
    "workers": {"workers.cpu", "workers.gpu", "orchestrator"},
    "workers.cpu": {"workers.gpu", "orchestrator"},
    "workers.gpu": {"workers.cpu", "orchestrator"},
    "orchestrator": set(),
}
#: (module, layer) pairs allowed despite FORBIDDEN: the launcher imports each tier's tasks
ALLOWED = {("workers.launch", "workers.cpu"), ("workers.launch", "workers.gpu")}


def violations(root: Path) -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            source = layer(module)
            for line, name in imported_names(path, root):
                target = layer(name)
                if target in FORBIDDEN[source] and (module, target) not in ALLOWED:
                    problems.append(f"{path.relative_to(root)}:{line}: {source} imports {name}")
    return sorted(set(problems))


def test_the_code_keeps_its_layers():
    assert violations(ROOT) == []


def test_every_package_is_scanned():
    scanned = {module_name(p, ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert {"shared.settings", "models.weights", "workers.cpu.tasks", "workers.gpu.stage",
            "orchestrator.cli"} <= scanned


def test_scanner_finds_planted_violations(tmp_path):
    files = {
        "shared/__init__.py": "",
        "shared/ok.py": "import os\nfrom shared import errors\n",
        "shared/bad.py": "def late():\n    from workers.gpu.stage import GpuModels\n",  # inside a function
        "models/__init__.py": "",
        "models/bad.py": "import importlib\nimportlib.import_module('orchestrator.cli')\n",
        "workers/__init__.py": "",
        "workers/runtime.py": "from shared.settings import Settings\nimport models.weights\n",  # allowed
        "workers/launch.py": "from workers.cpu import tasks\nfrom workers.gpu import tasks\n",  # the launcher
        "workers/bad.py": "import orchestrator.submit\n",
        "workers/plumbing.py": "def late():\n    from workers.gpu.stage import GpuModels\n",  # plumbing -> tier
        "workers/cpu/__init__.py": "",
        "workers/cpu/bad.py": "from ..gpu import stage\n",  # relative
        "workers/cpu/bad2.py": "from workers import gpu\n",
        "workers/gpu/__init__.py": "",
        "workers/gpu/bad.py": "if True:\n    import workers.cpu.stage as s\n",
        "orchestrator/__init__.py": "",
        "orchestrator/ok.py": "import workers.gpu.stage, workers.cpu.stage, models.tiny\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    assert sorted({v.split(":")[0] for v in found}) == sorted([
        "models/bad.py", "shared/bad.py", "workers/bad.py", "workers/cpu/bad.py", "workers/cpu/bad2.py",
        "workers/gpu/bad.py", "workers/plumbing.py"])
    assert "shared/bad.py:2: shared imports workers.gpu.stage" in found
