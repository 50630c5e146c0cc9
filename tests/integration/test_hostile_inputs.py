"""Hostile inputs and bad places (issue 9, items 9-12): each input ends with a row and a reason,
the run goes on; a bad OUTPUT is refused before any model loads; a full disk tears nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.diskio import append_whole
from shared.errors import (
    DiskFullError, ImageTooLargeError, InputFileTooLargeError, NotAFileError, SymlinkLoopError, SymlinkOutsideError,
    UnsupportedImageError,
)
from shared.imageio import decode_image
from shared.inputfiles import read_local_input, walk_folder
from shared.settings import DetectorName
from shared.storage import LocalBackend
from tests.services import ROOT, worker_env
from workers.cpu.detection import Detections, build_detector, detect_downscaled

CAP = 64 * 2**20


def _png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def _animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


@pytest.fixture()
def hostile(tmp_path, faces_dir):
    """A folder of odd entries named like images, and a secret outside it."""
    root = tmp_path / "in"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes((faces_dir / "id01_5.jpg").read_bytes())
    os.mkfifo(root / "fifo.jpg")
    (root / "dir.jpg").mkdir()
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "outside.jpg")
    with open(root / "sparse.jpg", "wb") as f:
        f.truncate(3 * 2**30)  # 3 GB, no block written
    (root / "anim.gif").write_bytes(_animated_gif())
    (root / "photo.heic").write_bytes(HEIC)
    (root / "one.png").write_bytes(_png((1, 1)))
    (root / "small19.png").write_bytes(_png((19, 19)))
    (root / "thin.png").write_bytes(_png((1, 5000)))
    os.mkdir(tmp_path / "elsewhere")
    shutil.copy(faces_dir / "id01_5.jpg", tmp_path / "elsewhere" / "x.jpg")
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a symlinked folder: not entered
    return root


EXPECTED = {
    "fifo.jpg": ("failed", "not_a_file"), "dir.jpg": ("failed", "not_a_file"),
    "loop.jpg": ("failed", "symlink_loop"), "outside.jpg": ("failed", "symlink_outside_input"),
    "sparse.jpg": ("failed", "file_too_large"), "anim.gif": ("failed", "unsupported_format"),
    "photo.heic": ("failed", "unsupported_format"), "one.png": ("no_face", "no_face"),
    "small19.png": ("no_face", "no_face"), "thin.png": ("no_face", "no_face"),
}


def test_only_regular_files_are_read_and_capped(hostile, tmp_path):
    root = str(hostile)
    cases = {"fifo.jpg": NotAFileError, "dir.jpg": NotAFileError, "loop.jpg": SymlinkLoopError,
             "outside.jpg": SymlinkOutsideError, "sparse.jpg": InputFileTooLargeError}
    for name, error in cases.items():
        with pytest.raises(error):
            read_local_input(str(hostile / name), max_bytes=CAP, root=root)
    with pytest.raises(NotAFileError, match="character device"):
        read_local_input("/dev/zero", max_bytes=CAP)
    assert read_local_input(str(hostile / "outside.jpg"), max_bytes=CAP)  # named explicitly: followed
    os.symlink("one.png", hostile / "inside.png")
    assert read_local_input(str(hostile / "inside.png"), max_bytes=CAP, root=root) == _png((1, 1))
    with pytest.raises(InputFileTooLargeError):
        read_local_input(str(hostile / "one.png"), max_bytes=10)


def test_folder_listing_keeps_odd_entries_and_stays_inside(hostile):
    from orchestrator.listing import open_listing
    from shared.settings import Settings
    from shared.storage import open_storage

    keys = {i.key for i in open_listing(str(hostile), open_storage(Settings.from_env())).items()}
    assert keys == set(EXPECTED)  # nothing silent; nothing under the symlinked folder


def test_animated_and_heic_are_unsupported_with_a_reason():
    with pytest.raises(UnsupportedImageError, match="animated GIF"):
        decode_image(_animated_gif(), max_pixels=10**8)
    with pytest.raises(UnsupportedImageError, match="HEIF"):
        decode_image(HEIC, max_pixels=10**8)


def test_pillow_limit_follows_the_setting_both_ways():
    with pytest.raises(ImageTooLargeError):
        decode_image(_png((64, 64)), max_pixels=1000)  # lowered
    big = _png((10000, 9000), "L")  # 90 M pixels: above Pillow's own default limit (89.5 M)
    rgb = decode_image(big, max_pixels=120_000_000, max_side=2048)  # raised: decodes
    assert rgb.shape == (2250, 2500, 3)
    with pytest.raises(ImageTooLargeError):
        decode_image(big, max_pixels=50_000_000)


def test_reduced_decode_keeps_exif_orientation(faces_dir, tmp_path):
    from tests.badinputs import write_bad_inputs

    expected = write_bad_inputs(faces_dir, tmp_path)
    assert expected["exif_rotated.jpg"] == "done"
    full = decode_image((tmp_path / "exif_rotated.jpg").read_bytes(), max_pixels=10**8)
    small = decode_image((tmp_path / "exif_rotated.jpg").read_bytes(), max_pixels=10**8, max_side=150)
    assert (full.shape[0] > full.shape[1]) == (small.shape[0] > small.shape[1]) and small.shape[0] < full.shape[0]


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    from shared.imageio import decode_scaled
    data = open(sys.argv[1], "rb").read()
    rgb, scale = decode_scaled(data, max_pixels=120_000_000, max_side=2048)
    # ru_maxrss survives fork and exec (it would report pytest's own peak): the mm's VmHWM does not
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(rgb.shape, scale, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, hwm // 1024)
""")


def test_16bit_9400px_png_decodes_under_1gb(tmp_path):
    ramp = (np.arange(9400, dtype=np.uint16) * 6)[None, :] + np.arange(9400, dtype=np.uint16)[:, None]
    Image.fromarray(ramp).save(tmp_path / "big16.png")  # 16-bit grey, 88 M pixels
    del ramp
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "big16.png")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mib = int(proc.stdout.split()[-1])
    print(f"\npeak RSS (VmHWM) decoding a 9400x9400 16-bit PNG: {peak_mib} MiB ({proc.stdout.strip()})")
    assert "(2350, 2350, 3)" in proc.stdout and peak_mib < 1024


@pytest.fixture(scope="module")
def mtcnn():
    return build_detector(DetectorName.MTCNN, torch.device("cpu"), Path("/nonexistent"), 20)


@pytest.mark.parametrize("shape", [(1, 1), (19, 19), (1, 5000), (5000, 1), (30, 4000)])
def test_images_below_the_detector_minimum_have_no_face(mtcnn, shape):
    found = detect_downscaled(mtcnn, np.full((*shape, 3), 128, np.uint8), 1024, 20)
    assert len(found) == 0


class _Fixed:
    """A detector that reports given boxes (every detector's output goes through the same filter)."""

    name, sha256, min_side = "fixed", "", 1

    def __init__(self, sides):
        self.sides = sides

    def __call__(self, rgb):
        boxes = np.array([[10, 10, 10 + s, 10 + s, 0.99] for s in self.sides], np.float32)
        return Detections(boxes, np.zeros((len(self.sides), 5, 2), np.float32))


def test_min_face_size_filters_every_detectors_boxes():
    found = detect_downscaled(_Fixed([12, 25]), np.zeros((200, 200, 3), np.uint8), 1024, 20)
    assert found.boxes[:, 2].tolist() == [35.0]  # the 12 px face is dropped
    big = detect_downscaled(_Fixed([12, 25]), np.zeros((2048, 2048, 3), np.uint8), 1024, 30)
    assert len(big) == 1 and big.boxes[0, 2] - big.boxes[0, 0] == 50  # 25 px at half size = 50 input px >= 30


def test_local_write_on_a_full_disk_leaves_no_tmp(full_tmpfs):
    with pytest.raises(DiskFullError, match="no space left"):
        LocalBackend().write(str(full_tmpfs / "out" / "a.png"), b"x" * 2 * 2**20)
    assert not [p for p in full_tmpfs.rglob("*") if p.name.endswith(".tmp")]


def test_manifest_append_is_whole_or_nothing(full_tmpfs):
    manifest = full_tmpfs / "m.jsonl"
    manifest.write_bytes(b'{"a": 1}\n{"torn": ')  # a crash mid-row
    _fill(full_tmpfs)
    row = json.dumps({"input": "x" * 9000}).encode() + b"\n"  # needs more pages than are free
    with pytest.raises(DiskFullError):
        append_whole(manifest, row)
    assert manifest.read_bytes() == b'{"a": 1}\n'  # the torn row cut, the new one not half written
    (full_tmpfs / "filler").unlink()
    append_whole(manifest, row)
    assert manifest.read_bytes() == b'{"a": 1}\n' + row


def _fill(mount: Path) -> None:
    with open(mount / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.fixture()
def full_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("mount refused (needs root): no real small filesystem to fill")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def _veil_run(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", *map(str, args), "-q", "--device", "cpu"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_output_that_is_a_file_is_refused_before_the_weights(tmp_path, faces_dir):
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    env = worker_env(models_dir=tmp_path / "no-models")  # a run that got further would say weights missing
    proc = _veil_run(env, faces_dir, target, timeout=60)
    assert proc.returncode == 2 and f"OUTPUT {str(target)!r} is an existing file" in proc.stderr, proc.stderr
    assert "weights" not in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_output_is_refused_before_the_weights(tmp_path, faces_dir):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("mount refused (needs root)")
    try:
        env = worker_env(models_dir=tmp_path / "no-models")
        for output in (ro, ro / "sub" / "out"):
            proc = _veil_run(env, faces_dir, output, timeout=60)
            assert proc.returncode == 2 and f"OUTPUT {str(output)!r} cannot be" in proc.stderr, proc.stderr
            assert "weights" not in proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)])


@pytest.mark.slow
def test_hostile_folder_and_list_file_each_get_a_row(hostile, tmp_path, tiny_models, faces_dir):
    from tests.badinputs import write_bad_inputs

    write_bad_inputs(faces_dir, tmp_path / "bad")
    listing = tmp_path / "list.txt"
    listing.write_text(f"/dev/zero\n{hostile / 'fifo.jpg'}\n{tmp_path / 'bad' / 'no_face.jpg'}\n")
    env = worker_env(models_dir=tiny_models, steps=2, batch_size=2)
    for spec, expected in ((hostile, EXPECTED), (listing, {"zero": ("failed", "not_a_file"),
                                                         "fifo.jpg": ("failed", "not_a_file"),
                                                         "no_face.jpg": ("no_face", "no_face")})):
        out = tmp_path / f"out-{spec.name}"
        proc = _veil_run(env, spec, out)
        assert proc.returncode == 1, proc.stderr[-3000:]  # some failed; the run went on to the end
        rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        got = {Path(r["input"]).name: (r["status"], r["reason"].split(":")[0]) for r in rows}
        assert got == expected


@pytest.mark.slow
def test_disk_full_run_stops_with_one_line_and_resumes(tmp_path, tiny_models, faces_dir, full_tmpfs):
    from tests.badinputs import write_bad_inputs

    src = tmp_path / "in"
    expected = write_bad_inputs(faces_dir, src)
    for name in list(expected):
        if expected[name] == "done":
            (src / name).unlink()  # no generation: failed and no_face rows only
    out = full_tmpfs / "out"
    out.mkdir()
    manifest = out / "manifest.jsonl"
    old = json.dumps({"input": "/elsewhere/old.jpg", "status": "failed", "reason": "x", "pad": "p" * 3900})
    manifest.write_text(old + "\n" + '{"input": "/elsewhere/torn.jpg", "sta')  # a crash mid-row, near 4 KiB
    _fill(full_tmpfs)
    env = worker_env(models_dir=tiny_models, steps=2, batch_size=2)
    proc = _veil_run(env, src, out)
    assert proc.returncode == 3, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("veil: disk full:") and str(manifest) in last and "Traceback" not in proc.stderr
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]  # every row whole
    assert rows[0]["input"] == "/elsewhere/old.jpg" and all("torn" not in r["input"] for r in rows)
    assert not [p for p in full_tmpfs.rglob("*") if p.name.endswith(".tmp")]
    (full_tmpfs / "filler").unlink()
    again = _veil_run(env, src, out)
    assert again.returncode == 1, again.stderr[-3000:]
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {Path(r["input"]).name for r in rows[1:]} == set(expected) - {n for n, s in expected.items() if s == "done"}
