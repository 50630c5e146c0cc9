"""`veil run --mode scene` end to end (issue 14) on real group photos, with the tiny RANDOM test
models (the new faces are noise: what is tested is where pixels change, sizes, formats and rows).

Outside every face's square the output is the input: bit for bit for PNG; for JPEG (re-encoded
as a whole) every 8x8 block that no square touches decodes exactly as the input re-encoded alone
(JPEG codes blocks independently; outputs are written without chroma subsampling)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from shared.imageio import decode_image, encode_image
from shared.scene import face_seed
from tests.services import ROOT, worker_env

PHOTOS = ["couple.jpg", "selfie-many-people.jpg"]
MAX = 120_000_000


@pytest.fixture(scope="module")
def scene_run(faces_dir, tiny_models, tmp_path_factory):
    src, out = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    for name in PHOTOS:
        shutil.copy(faces_dir / name, src / name)
        Image.open(faces_dir / name).save(src / name.replace(".jpg", ".png"))  # lossless: the exact check
    env = worker_env(models_dir=tiny_models, steps=3, batch_size=8, image_size=128)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "--device", "cpu",
                           "--mode", "scene", "-q"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    # issue 25: the summary line counts the faces, and how many images had how many
    per_image = [len(r["faces"]) for r in rows.values()]
    assert f"faces: {sum(per_image)} changed in {len(rows)} images (" in proc.stdout, proc.stdout
    return src, out, rows


def _outside(shape, faces) -> np.ndarray:
    keep = np.ones(shape[:2], bool)
    for f in faces:
        x, y, side = f["region"]
        keep[y:y + side, x:x + side] = False
    return keep


def test_every_face_is_recorded_with_its_own_prompt_and_seed(scene_run):
    src, _, rows = scene_run
    assert set(rows) == {*PHOTOS, "couple.png", "selfie-many-people.png"}
    for name, row in rows.items():
        assert row["status"] == "done" and row["mode"] == "scene", name
        assert row["sampler_noise"] == "exact"  # issue 19: the faithful sampler's noise scheme, recorded
        faces = row["faces"]
        assert len(faces) >= (2 if name.startswith("couple") else 4), name
        areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
        assert areas == sorted(areas, reverse=True)  # biggest first: face 0 is the portrait's face
        assert row["face_box"] == faces[0]["box"] and row["prompt"] == faces[0]["prompt"]
        for i, f in enumerate(faces):
            assert f["seed"] == face_seed(row["seed"], i) and f["guard"] is None
            assert f["prompt"].startswith("closeup portrait photo of a ") and len(f["celeba_scores"]) == 40
            x, y, side = f["region"]
            x1, y1, x2, y2 = f["box"][:4]
            h, w = Image.open(src / name).size[::-1]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h  # issue 25: clamped to the photo
            assert x <= x1 and y <= y1 and x + side >= x2 and y + side >= y2  # the square holds the face
    # the same photo as JPEG and PNG: same faces, same seeds (the seed follows the key, so not equal)
    assert [f["box"] for f in rows["couple.jpg"]["faces"]] == [f["box"] for f in rows["couple.png"]["faces"]]


@pytest.mark.parametrize("name", [n.replace(".jpg", ".png") for n in PHOTOS])
def test_png_outside_the_faces_is_the_input_bit_for_bit(scene_run, name):
    src, out, rows = scene_run
    before = decode_image((src / name).read_bytes(), max_pixels=MAX)
    after_file = Image.open(out / name)
    assert after_file.format == "PNG" and after_file.size == (before.shape[1], before.shape[0])
    after = np.asarray(after_file.convert("RGB"))
    keep = _outside(before.shape, rows[name]["faces"])
    assert keep.any() and np.array_equal(after[keep], before[keep])
    assert (after[~keep] != before[~keep]).any(axis=-1).mean() > 0.5  # the squares were regenerated


@pytest.mark.parametrize("name", PHOTOS)
def test_jpeg_keeps_size_format_and_every_untouched_block(scene_run, name):
    src, out, rows = scene_run
    before = decode_image((src / name).read_bytes(), max_pixels=MAX)
    after_file = Image.open(out / name)
    assert after_file.format == "JPEG" and after_file.size == (before.shape[1], before.shape[0])
    assert not after_file.getexif()
    after = np.asarray(after_file.convert("RGB"))
    reencoded = decode_image(encode_image(before, name), max_pixels=MAX)
    keep = _outside(before.shape, rows[name]["faces"])
    h, w = (before.shape[0] // 8) * 8, (before.shape[1] // 8) * 8
    blocks = keep[:h, :w].reshape(h // 8, 8, w // 8, 8).all(axis=(1, 3))
    mask = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
    assert mask.mean() > 0.05  # couple.jpg: two faces fill most of the photo
    assert np.array_equal(after[:h, :w][mask], reencoded[:h, :w][mask])


@pytest.mark.slow
def test_submit_scene_mode_through_both_tiers(faces_dir, tiny_models, tmp_path):
    """The distributed path: one message per image carrying every face; the GPU worker composites
    the image and writes it with a sidecar listing every face (Redis db 6)."""
    import boto3

    from shared.jobs import JobStore
    from tests.services import moto_s3, redis_url, start_worker, stop, wait_for

    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="scene")
        client.put_object(Bucket="scene", Key="in/selfie-many-people.jpg",
                          Body=(faces_dir / "selfie-many-people.jpg").read_bytes())
        env = worker_env(models_dir=tiny_models, broker_url=redis_url(6), s3_endpoint_url=endpoint,
                         s3_access_key_id="testing", s3_secret_access_key="testing", batch_size=4,
                         gpu_batch_wait_s=1.0, steps=2, image_size=128, cpu_queue="cpu-6", gpu_queue="gpu-6")
        cpu = start_worker("cpu", env, tmp_path / "cpu.log", "--concurrency", "1")
        gpu = start_worker("gpu", env, tmp_path / "gpu.log")
        try:
            sub = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", "s3://scene/in/", "--out",
                                  "s3://scene/out/", "--mode", "scene"], env=env, cwd=ROOT, capture_output=True,
                                 text=True, timeout=120)
            assert sub.returncode == 0, sub.stderr
            job_id = sub.stdout.strip().splitlines()[-1]
            jobs = JobStore.from_url(env["VEIL_BROKER_URL"])
            job = wait_for(lambda: (j := jobs.get(job_id)) and j.finished >= 1 and j, 600, "the scene job")
            assert job.counts["done"] == 1 and job.finished == 1
        finally:
            stop(gpu)
            stop(cpu)
        row = json.loads(client.get_object(Bucket="scene", Key="out/selfie-many-people.jpg.json")["Body"].read())
        body = client.get_object(Bucket="scene", Key="out/selfie-many-people.jpg")["Body"].read()
    assert row["status"] == "done" and row["mode"] == "scene" and len(row["faces"]) >= 4
    assert all(f["region"] and f["prompt"] and f["seed"] == face_seed(row["seed"], i)
               for i, f in enumerate(row["faces"]))
    before = decode_image((faces_dir / "selfie-many-people.jpg").read_bytes(), max_pixels=MAX)
    after = decode_image(body, max_pixels=MAX)
    assert after.shape == before.shape and body[:2] == b"\xff\xd8"


def test_guard_retries_with_the_next_seeds_then_masks(faces_dir, tiny_models, tmp_path):
    """`--guard dlib` (real dlib weights) with a threshold no face can pass (2.0, the largest cosine
    distance): every face is generated VEIL_GUARD_TRIES times with its next seeds, then masked, and
    its row says so."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.open(faces_dir / "selfie-many-people.jpg").save(src / "selfie.png")
    env = worker_env(models_dir=tiny_models, steps=2, batch_size=8, image_size=64, guard_threshold=2.0, guard_tries=2)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "--device", "cpu",
                           "--mode", "scene", "--guard", "dlib", "-q"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    assert row["status"] == "done" and len(row["faces"]) >= 4
    after = np.asarray(Image.open(out / "selfie.png").convert("RGB"))
    for i, f in enumerate(row["faces"]):
        g = f["guard"]
        assert g["embedder"] == "dlib" and g["threshold"] == 2.0 and g["tries"] == 2 and len(g["distances"]) == 2
        assert not g["passed"] and g["fallback"] == "mask"
        assert f["seed"] == face_seed(row["seed"], i, attempt=1)  # the last try's seed is recorded
        x1, y1, x2, y2 = (int(v) for v in f["box"][:4])
        assert after[max(y1, 0) + 1:y2 - 1, max(x1, 0) + 1:x2 - 1].max() == 0  # masked
    n = len(row["faces"])  # issue 25: the summary line counts the guard's masks
    assert f"guard: {n} faces judged, {n} still re-identified and masked (in 1 image;" in proc.stdout, proc.stdout
