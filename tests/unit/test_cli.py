"""The ``veil`` command's own messages: a bad setting is named as the user typed it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

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


def _dead_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["jobs"], ["status", "j1"], ["status", "j1", "--watch"], ["cancel", "j1"],
                                     ["retry", "j1"], ["finalize", "j1"]])
def test_redis_not_there_is_one_line_naming_the_setting(command, monkeypatch, capsys):
    from orchestrator.cli import main
    from orchestrator.service_errors import EXIT_SERVICE

    port = _dead_port()
    monkeypatch.setenv("VEIL_BROKER_URL", f"redis://veil:s3cret@127.0.0.1:{port}/0")
    assert main(command) == EXIT_SERVICE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("veil: cannot reach Redis (VEIL_BROKER_URL=redis://veil:***@"), err
    assert f"127.0.0.1:{port}" in err and "s3cret" not in err and "Traceback" not in err


@pytest.mark.parametrize("credentials", [True, False])
def test_s3_not_there_or_no_credentials_is_one_line(credentials, monkeypatch, capsys, tmp_path):
    from orchestrator.cli import main
    from orchestrator.service_errors import EXIT_SERVICE

    monkeypatch.setenv("VEIL_S3_ENDPOINT_URL", f"http://127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("VEIL_S3_ACCESS_KEY_ID", "a")
        monkeypatch.setenv("VEIL_S3_SECRET_ACCESS_KEY", "b")
    assert main(["submit", "s3://bucket/in/", "--out", "s3://bucket/out/"]) == EXIT_SERVICE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    expected = "cannot reach S3 (VEIL_S3_ENDPOINT_URL=" if credentials else "set VEIL_S3_ACCESS_KEY_ID and"
    assert expected in err, err


@pytest.mark.parametrize("value", ["-1", "0", "x"])
def test_limit_must_be_a_positive_whole_number(value, capsys):
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "in", "out", "--limit", value])
    assert exit_.value.code == 2 and "argument --limit: must be" in capsys.readouterr().err


def test_an_unquoted_glob_gets_a_hint(capsys):
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "photos/a.jpg", "photos/b.jpg", "out"])  # what the shell makes of photos/*.jpg
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: out" in err and "quote it" in err


def test_models_tiny_on_an_existing_file_is_one_line(tmp_path, capsys):
    from orchestrator.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["models", "tiny", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.startswith("veil: DIR ") and (tmp_path / "afile").read_text() == "x"


def test_an_output_that_cannot_be_made_is_one_line(tmp_path, capsys):
    from orchestrator.outputlock import output_lock
    from shared.errors import InputError
    from shared.settings import Settings
    from shared.storage import open_storage

    with pytest.raises(InputError, match=r"OUTPUT '/proc/veil-out' cannot be made"):  # root passes access()
        with output_lock("/proc/veil-out", open_storage(Settings.from_env({}))):
            pass


def test_a_guard_on_portraits_is_one_line_naming_the_flags(tmp_path, capsys, monkeypatch):
    """Issue 25: was ``veil: VEIL_: value error, ...`` (a rule across settings has no field)."""
    from orchestrator.cli import main

    monkeypatch.delenv("VEIL_MODE", raising=False)
    monkeypatch.delenv("VEIL_METHOD", raising=False)
    monkeypatch.delenv("VEIL_GUARD", raising=False)
    assert main(["run", str(tmp_path), str(tmp_path / "out"), "--guard", "dlib"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("veil: --guard (VEIL_GUARD) needs --mode scene (VEIL_MODE) or a classical --method"), err
    assert err.count("\n") == 1 and "VEIL_:" not in err and "value error" not in err.lower()


def test_faces_flag_is_named_when_wrong(tmp_path, capsys):
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tmp_path), str(tmp_path / "out"), "--faces", "most"])
    assert exit_.value.code == 2 and "argument --faces: invalid choice: 'most'" in capsys.readouterr().err
