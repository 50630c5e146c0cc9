"""The ``veil`` command's own messages: a bad setting is named as the user typed it."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.services import ROOT, worker_env


def veil(*args: str, **env: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=worker_env(**env), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_bad_flag_is_named_as_the_flag(tmp_path):
    proc = veil("run", str(tmp_path), str(tmp_path / "out"), "--batch-size", "0", models_dir=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "veil: --batch-size: must be >= 1 (got 0)"


def test_bad_variable_is_named_as_the_variable(tmp_path):
    proc = veil("models", "check", models_dir=tmp_path, steps="0", image_size="100")
    assert proc.returncode == 2
    assert "VEIL_STEPS: must be >= 1 (got '0')" in proc.stderr
    assert "VEIL_IMAGE_SIZE: must be a multiple of 64 (got '100')" in proc.stderr
    assert "validation error" not in proc.stderr and "pydantic" not in proc.stderr


def test_run_flags_have_help():
    entries = re.split(r"\n  (?=-)", veil("run", "--help").stdout)
    for flag in ("--device", "--sampler", "--detector", "--overwrite"):
        entry = next(e for e in entries if e.startswith(flag + " ") or e.startswith(flag + "\n"))
        assert len(entry.split()) > 3, entry  # the flag, its choices, then words of help


def test_the_usage_in_the_modules_docstring_names_every_command_and_flag():
    """orchestrator/cli.py's docstring is the command's summary: kept true against the parser."""
    import argparse

    import orchestrator.cli as cli

    usage = cli.__doc__ or ""

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += walk(child, f"{path} {name}")
            elif action.option_strings and action.dest != "help":
                if not any(re.search(rf"{re.escape(o)}\b", usage) for o in action.option_strings if o.startswith("--")):
                    missing.append(f"{path} {'/'.join(action.option_strings)}")
        if path.count(" ") == 1 and not re.search(rf"{re.escape(path)}\b", usage):
            missing.append(path)
        return missing

    assert walk(cli.build_parser(), "veil") == []
