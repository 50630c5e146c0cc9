"""`veil run --method` and `veil eval` on real photos with dlib's real weights (issue 13).

Twelve small photos of six people from ../shared/faces (three people with three photos each,
three with one: distractors), their own identities CSV, and one `veil eval` over every run at
once (the originals are embedded once): an identity control (outputs = inputs), mask, a light
blur (VEIL_BLUR_SIGMA=0.05), a strong blur, pixelation, and the paper's method with the tiny
RANDOM models (noise: its numbers mean nothing, the report says so). What is asserted is what
is known to be true of these methods, not the figures themselves (BENCHMARKS.md has those).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.embedded import run
from shared.settings import Settings
from shared.storage import open_storage

PHOTOS = [
    "id01_5.jpg", "id01_11.jpg", "id01_6.jpg",
    "id02_12.jpg", "id02_55.jpg", "id02_53.jpg",
    "id03_16.jpg", "id03_62.jpg", "id03_61.jpg",
    "id04_38.jpg", "id06_21.jpg", "id07_25.jpg",
]
CLASSICAL = {"mask": ("mask", {}), "blur_light": ("blur", {"blur_sigma": 0.05}),
             "blur_strong": ("blur", {"blur_sigma": 0.5}), "pixelate": ("pixelate", {})}


@pytest.fixture(scope="module")
def evaluated(faces_dir, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    listing = root / "inputs.txt"
    listing.write_text("".join(f"{faces_dir / p}\n" for p in PHOTOS))
    identities = root / "identities.csv"
    with open(identities, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "identity"])
        w.writerows([p, p.split("_")[0]] for p in PHOTOS)
    # 1. The identity control: outputs = inputs, a manifest as veil run writes it
    control = root / "identity"
    control.mkdir()
    with open(control / "manifest.jsonl", "w") as f:
        for p in PHOTOS:
            shutil.copy(faces_dir / p, control / p)
            f.write(json.dumps({"input": str(faces_dir / p), "output": str(control / p), "status": "done"}) + "\n")
    # 2. The classical methods through `veil run` (in this process: the same function the CLI calls)
    runs = [control]
    for label, (method, strength) in CLASSICAL.items():
        settings = Settings.from_env({}, method=method, models_dir=root / "no-models", device="cpu", **strength)
        summary = run(str(listing), str(root / label), settings, open_storage(settings), progress=False)
        assert summary.ok, summary.text()
        runs.append(root / label)
    # 3. The paper's method with the tiny random models, on three photos, small and fast
    sd_list = root / "sd.txt"
    sd_list.write_text("".join(f"{faces_dir / p}\n" for p in PHOTOS[:3]))
    settings = Settings.from_env({}, models_dir=tiny_models, device="cpu", steps=2, image_size=64, batch_size=4)
    assert run(str(sd_list), str(root / "sd_tiny"), settings, open_storage(settings), progress=False).ok
    runs.append(root / "sd_tiny")
    # 4. One `veil eval` over all of them, through the command line's parser (the tiny models'
    #    FACER and DeepFace read the attributes: numbers that mean nothing, flagged as such)
    out = root / "report"
    before = os.environ.get("VEIL_MODELS_DIR")
    os.environ["VEIL_MODELS_DIR"] = str(tiny_models)
    try:
        code = main(["eval", str(faces_dir), *map(str, runs), "--identities", str(identities), "--out", str(out),
                     "--embedder", "dlib", "--html", "--paper", "--device", "cpu", "-q"])
    finally:
        if before is None:
            del os.environ["VEIL_MODELS_DIR"]
        else:
            os.environ["VEIL_MODELS_DIR"] = before
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


def _dlib(metrics, label):
    return metrics["runs"][label]["identity"]["dlib"]


def test_classical_outputs_keep_the_image_outside_the_face(evaluated, faces_dir):
    out, metrics = evaluated
    import numpy as np
    from PIL import Image

    folder = Path(metrics["runs"]["mask"]["anonymized"])
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len(PHOTOS) and {r["method"] for r in rows} == {"mask"}
    for row in rows:
        original = np.asarray(Image.open(row["input"]).convert("RGB"), dtype=int)
        masked = np.asarray(Image.open(row["output"]), dtype=int)
        assert masked.shape == original.shape
        assert row["faces"][0]["box"] == row["face_box"]  # every face masked (issue 25), biggest first
        far = np.ones(original.shape[:2], bool)
        for face in row["faces"]:
            x1, y1, x2, y2 = (int(v) for v in face["box"][:4])
            assert masked[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].mean() <= 3  # black (JPEG ringing at most)
            far[max(0, y1 - 16) : y2 + 16, max(0, x1 - 16) : x2 + 16] = False
        assert np.abs(masked[far] - original[far]).mean() < 3  # the rest kept (JPEG re-encoding only)
        assert Path(row["output"] + ".json").exists() is False  # veil run writes a manifest, not sidecars


def test_identity_control_is_re_identified(evaluated):
    _, metrics = evaluated
    control = _dlib(metrics, "identity")
    assert control["reid_self_at_1"] == 1.0
    assert control["reid_at_1"] >= 0.9
    assert metrics["runs"]["identity"]["no_face_rate"] == 0.0
    assert metrics["n_identities"] == 6 and control["n_probes"] == len(PHOTOS)


def test_mask_is_at_chance(evaluated):
    _, metrics = evaluated
    mask = _dlib(metrics, "mask")
    assert 0 < mask["chance_at_1"] < 0.5
    assert mask["chance_at_1"] == pytest.approx(_dlib(metrics, "identity")["chance_at_1"])  # over every probe
    assert mask["reid_at_1"] <= mask["chance_at_1"] + 0.1
    # the probe is the masked face (the row's box), not another face the photo may hold: gone, a miss
    assert mask["n_lost"] == len(PHOTOS) and mask["n_probes_other"] == _dlib(metrics, "identity")["n_probes_other"]


def test_orderings_identity_then_light_blur_then_mask_for_every_reid_metric(evaluated):
    _, metrics = evaluated
    control, light, mask = (_dlib(metrics, r) for r in ("identity", "blur_light", "mask"))
    for key in ("reid_at_1", "reid_at_5", "reid_at_10", "map", "map_at_50", "reid_self_at_1"):
        assert control[key] >= light[key] >= mask[key], key
        assert control[key] > mask[key], key
    strong = _dlib(metrics, "blur_strong")
    assert strong["reid_at_1_faced"] is None or strong["reid_at_1"] <= strong["reid_at_1_faced"]


def test_a_light_blur_still_leaks_identity(evaluated):
    _, metrics = evaluated
    light, mask = _dlib(metrics, "blur_light"), _dlib(metrics, "mask")
    assert metrics["runs"]["blur_light"]["no_face_rate"] < 0.5
    assert light["reid_at_1"] >= mask["reid_at_1"] + 0.5


def test_a_strong_blur_hides_the_face_from_the_detector_too(evaluated):
    _, metrics = evaluated
    assert metrics["runs"]["blur_strong"]["no_face_rate"] > metrics["runs"]["blur_light"]["no_face_rate"] + 0.3


def test_tiny_sd_runs_through_eval_and_is_flagged(evaluated):
    out, metrics = evaluated
    sd = metrics["runs"]["sd_tiny"]
    assert sd["method"] == "sd" and sd["n_probes"] == 3
    assert "mean nothing" in sd["note"]
    assert any("tiny RANDOM" in n for n in metrics["notes"])
    assert metrics["runs"]["identity"]["attributes"]["n"] == len(PHOTOS)  # read, with the tiny models
    assert metrics["runs"]["identity"]["attributes"]["gender_agreement"] == 1.0  # same image, same answer
    assert "skipped" in metrics["runs"]["identity"]["quality"]  # no Inception weights: no FID, no made-up one
    assert "mean nothing" in (out / "report.html").read_text()


def test_paper_tables_list_every_column_and_say_what_is_not_computed(evaluated):
    from orchestrator.evaluation.paper import TABLE1_COLUMNS, TABLE2_COLUMNS, TABLE3_COLUMNS

    out, metrics = evaluated
    text = (out / "paper_tables.md").read_text()
    for _, title in TABLE1_COLUMNS + TABLE2_COLUMNS + TABLE3_COLUMNS:
        assert title in text, title
    for row in ("paper: Piano et al. (sd)", "paper: DeepPrivacy2", "paper: FALCO"):
        assert row in text
    assert "0.007 (n=1000)" in text and "0.965 (n=1000)" in text and "53.3 (n=1000)" in text
    # weights absent here: the paper's embedders are named as not computed, never given a number
    assert set(metrics["not_computed"]) == {"clip-image", "facenet-vggface2", "facenet-casia"}
    table = {}  # (table number, run) -> its row's cells
    for number, section in enumerate(text.split("## Table ")[1:], start=1):
        for line in section.splitlines():
            if line.startswith("| ") and not line.startswith("| run "):
                cells = [c.strip() for c in line.strip("|").split(" | ")]
                table[number, cells[0]] = cells
    assert table[1, "identity"].count("not computed: weights absent (veil models fetch --eval)") == 3 * 4
    assert "dlib (not in the paper) R@1" in text
    control_r1 = float(table[1, "identity"][-4].split()[0])  # dlib R@1, the last columns
    assert control_r1 == pytest.approx(_dlib(metrics, "identity")["reid_at_1"], abs=1e-3)
    assert all(c.startswith("not computed: sd outputs of tiny RANDOM") for c in table[1, "sd_tiny"][2:])
    # the attribute models are the tiny random ones: Table II is not computed for any run
    assert "not computed: the attribute models are tiny RANDOM" in table[2, "blur_light"][2]
    # the tiny folder has HSEmotion and the Mugs ViT too: computed (metrics.json), never shown as results
    random_emotions = "not computed: the emotion model (HSEmotion) is a tiny RANDOM test model"
    assert table[2, "identity"][4] == table[2, "identity"][5] == random_emotions
    assert table[3, "mask"][2] == "not computed: FID Inception weights absent (veil models fetch --eval)"
    random_vdna = "not computed: Visual DNA's Mugs ViT is a tiny RANDOM test model"
    assert table[3, "identity"][3] == table[3, "mask"][4] == random_vdna
    assert "The paper's tables" in (out / "report.html").read_text()


def test_emotions_and_visual_dna_identity_control_and_orderings(evaluated):
    # tiny RANDOM models (flagged): what holds whatever the weights is checked, not the figures
    _, metrics = evaluated
    assert metrics["emotions_random"] and metrics["vdna_random"]
    assert any("HSEmotion" in n and "mean nothing" in n for n in metrics["notes"])
    runs = metrics["runs"]
    control = runs["identity"]["emotions"]
    assert control["n"] == len(PHOTOS) and control["valence_arousal_mse"] == 0.0
    assert control["emotion_agreement"] == 1.0
    assert control["label_source"] == {"hsemotion_on_originals": len(PHOTOS)}
    light = runs["blur_light"]["emotions"]
    assert light["n"] >= 1 and light["valence_arousal_mse"] > 0
    dna = {label: runs[label]["visual_dna"] for label in ("identity", "blur_light", "blur_strong", "mask")}
    assert dna["identity"]["vdna_dataset"] == 0.0 and dna["identity"]["vdna_image"] == 0.0
    assert all(d["n"] == len(PHOTOS) for d in dna.values())
    for key in ("vdna_dataset", "vdna_image"):
        assert 0 < dna["blur_light"][key] < dna["blur_strong"][key], key
        assert dna["blur_light"][key] < dna["mask"][key], key


def test_pairs_csv_has_a_row_per_input_of_every_run(evaluated):
    out, metrics = evaluated
    with open(out / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * len(PHOTOS) + 3
    control = [r for r in rows if r["run"] == "identity"]
    assert all(r["dlib_rank_of_source"] == "1" for r in control)


def test_report_opens_in_headless_chromium_with_no_broken_image(evaluated, tmp_path):
    out, _ = evaluated
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: scripts/install.sh installs it (apt-get install chromium)"
    # a copy of the report whose script writes, once loaded, how many images are broken
    page = tmp_path / "check.html"
    check = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;"
             "document.body.setAttribute('data-check', `images=${imgs.length} broken=${broken}`); });</script>")
    page.write_text((out / "report.html").read_text().replace("</body>", check + "</body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--allow-file-access-from-files", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert 'data-check="images=' in dom.stdout, dom.stderr[-2000:]
    count = dom.stdout.split('data-check="images=')[1].split('"')[0]
    images, broken = count.split(" broken=")
    assert int(images) >= 2 + 5 * 2 and broken == "0", count  # curves + contact sheets
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2000", (out / "report.html").as_uri()],
                   capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
    shutil.copy(shot, out / "report.png")
