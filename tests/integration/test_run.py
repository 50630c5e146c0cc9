"""`veil run` end to end in one process, on real photos and awkward files, with the tiny
RANDOM test models (images are noise; statuses, manifest rows and files are what is tested)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.badinputs import write_bad_inputs
from tests.services import ROOT, worker_env

PHOTOS = ["couple.jpg", "selfie-many-people.jpg", "id01_5.jpg"]


@pytest.fixture(scope="module")
def run_result(faces_dir, tiny_models, tmp_path_factory):
    src = tmp_path_factory.mktemp("in")
    (src / "people").mkdir()
    for name in PHOTOS:
        shutil.copy(faces_dir / name, src / "people" / name)
    expected = {f"people/{n}": "done" for n in PHOTOS}
    expected |= {f"odd/{k}": v for k, v in write_bad_inputs(faces_dir, src / "odd").items()}
    out = tmp_path_factory.mktemp("out")
    env = worker_env(models_dir=tiny_models, steps=4, batch_size=4, image_size=64)  # pixels not under test
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "--device", "cpu"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return src, out, expected, proc, rows, env


def test_every_input_ends_with_its_status(run_result):
    src, out, expected, proc, rows, _ = run_result
    got = {r["input"][len(str(src)) + 1:]: r["status"] for r in rows}
    assert got == expected, proc.stderr[-3000:]
    assert proc.returncode == 1  # some inputs failed: exit code says so
    failed = sum(1 for v in expected.values() if v == "failed")
    assert "veil run:" in proc.stdout and f"failed {failed}" in proc.stdout
    assert "tiny RANDOM test models" in proc.stderr  # never passed off as the method's output
    assert "veil run: generating 4 (4 steps)" in proc.stderr  # the bar says what a long wait is


def test_outputs_mirror_inputs_and_carry_no_metadata(run_result):
    src, out, expected, _, rows, _ = run_result
    for rel, status in expected.items():
        assert (out / rel).exists() == (status == "done"), rel  # failures never copy the original
    for row in rows:
        if row["status"] != "done":
            assert row["output"] is None and row["reason"]
            continue
        img = Image.open(row["output"])
        assert img.size == (64, 64)  # VEIL_IMAGE_SIZE
        assert not img.getexif() and "icc_profile" not in img.info
        assert b"SecretCam" not in open(row["output"], "rb").read()


def test_manifest_rows_hold_the_method_record(run_result):
    _, _, _, _, rows, _ = run_result
    done = [r for r in rows if r["status"] == "done"]
    reasons = {r["input"].rsplit("/", 1)[-1]: r["reason"] for r in rows if r["status"] != "done"}
    assert reasons["bomb_20000.png"].startswith("too_large")
    assert reasons["zero_bytes.jpg"].startswith("undecodable")
    assert reasons["no_face.jpg"].startswith("no_face")
    for r in done:
        assert len(r["celeba_scores"]) == 40 and len(r["face_box"]) == 5
        assert r["prompt"].startswith("closeup portrait photo of a ") and r["negative_prompt"]
        assert isinstance(r["seed"], int) and r["age"] >= 0
        assert {"realistic-vision-v5.1", "sd-vae-ft-mse", "facer-farl-celeba-224", "deepface-age"} <= set(r["model_sha256"])
        assert all(len(v) == 64 for v in r["model_sha256"].values()) and "detector-mtcnn" in r["model_sha256"]


def test_biggest_face_is_kept(run_result):
    _, _, _, _, rows, _ = run_result
    couple = next(r for r in rows if r["input"].endswith("couple.jpg"))
    x1, y1, x2, y2, _ = couple["face_box"]
    assert (x2 - x1) * (y2 - y1) > 500 * 700  # the larger of the two faces


def test_rerun_skips_finished_inputs(run_result):
    src, out, expected, _, rows, env = run_result
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "-q"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    # every outcome finishes a key (shared.keys.is_finished, as a sidecar does for veil submit)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(rows)  # no new row
    assert f"{len(expected)} already done" in proc.stdout, proc.stdout
    proc = subprocess.run([*cmd, "--retry-failed"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    after = (out / "manifest.jsonl").read_text().splitlines()
    retried = [json.loads(line) for line in after[len(rows):]]
    failed = sum(1 for v in expected.values() if v == "failed")
    assert {r["status"] for r in retried} == {"failed"} and len(retried) == failed  # only the failed ones
    assert f"{len(expected) - failed} already done" in proc.stdout, proc.stdout


def test_missing_weights_stop_before_any_input(tmp_path, faces_dir):
    env = worker_env(models_dir=tmp_path / "empty")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(faces_dir), str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "face_attribute.farl.celeba.pt" in proc.stderr and "veil models fetch" in proc.stderr
    assert not out.exists()


def test_unknown_setting_is_rejected(tmp_path, faces_dir):
    env = worker_env(models_dir=tmp_path, batch_sise=4)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", "check"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown setting VEIL_BATCH_SISE: did you mean VEIL_BATCH_SIZE" in proc.stderr
    assert len(proc.stderr) < 200, proc.stderr  # not every known name on one line


def test_output_inside_input_is_refused(tmp_path, tiny_models, faces_dir):
    (tmp_path / "in").mkdir()  # a valid INPUT: INPUT is checked first (an empty one says so)
    (tmp_path / "in" / "a.jpg").write_bytes((faces_dir / "id02_12.jpg").read_bytes())
    env = worker_env(models_dir=tiny_models)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(tmp_path / "in"),
                           str(tmp_path / "in" / "out")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "inside INPUT" in proc.stderr


def test_interrupted_run_resumes_where_it_stopped(tmp_path, tiny_models, faces_dir):
    import signal
    import time

    src = tmp_path / "in"
    src.mkdir()
    for name in ("id01_5.jpg", "id02_12.jpg", "id03_16.jpg", "id07_25.jpg"):
        shutil.copy(faces_dir / name, src / name)
    out = tmp_path / "out"
    env = worker_env(models_dir=tiny_models, steps=4, batch_size=1, image_size=64)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 300
    while not (manifest.exists() and manifest.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    done_before = manifest.read_text().count("\n")
    assert proc.returncode == 130 and "resume" in err
    assert 1 <= done_before < 4
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"{done_before} already done" in again.stdout
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in src.iterdir())  # each input once


def test_overwrite_redoes_finished_inputs(tmp_path, tiny_models, faces_dir):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(faces_dir / "id01_5.jpg", src / "id01_5.jpg")
    env = worker_env(models_dir=tiny_models, steps=2, batch_size=1, image_size=64)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "-q", "--device", "cpu"]
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    written = (out / "id01_5.jpg").stat().st_mtime_ns
    again = subprocess.run([*cmd, "--overwrite"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "done 1" in again.stdout and "0 already done" in again.stdout, again.stdout
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done", "done"]  # the new row is appended; the last one wins
    assert (out / "id01_5.jpg").stat().st_mtime_ns > written  # the image was generated again


def test_limit_says_inputs_were_left_out(tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(tmp_path / "in" / f"{i}.png")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(tmp_path / "in"), str(tmp_path / "out"),
                           "--method", "blur", "--limit", "1", "-q"], env=worker_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 processed" in proc.stdout and "stopped at --limit 1: later inputs not processed" in proc.stdout
