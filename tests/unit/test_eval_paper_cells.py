"""``veil eval --paper``'s Table II emotion cells and Table III Visual DNA cells, from a metrics
dict built by hand: filled (with n) where measured with real weights, ``not computed: <reason>``
where skipped or where the models are the tiny random ones."""

from __future__ import annotations

from orchestrator.evaluation.paper import RANDOM_EMOTIONS, RANDOM_VDNA, TABLE2_COLUMNS, TABLE3_COLUMNS, markdown

EMOTIONS = {"n": 40, "emotions_auc": 0.6123, "emotions_n_classes": 7, "valence_arousal_mse": 0.0456}
DNA = {"n": 40, "vdna_dataset": 4.44, "vdna_image": 12.34, "vdna_image_std": 1.11, "bins": 1000}


def _metrics(emotions: dict, dna: dict, **flags) -> dict:
    run = {
        "method": "blur",
        "identity": {},
        "attributes": {"skipped": "attribute models not loaded"},
        "quality": {"skipped": "FID/KID skipped: no"},
        "emotions": emotions,
        "visual_dna": dna,
    }
    return {"embedders": [], "not_computed": {}, "notes": [], "runs": {"blurred": run}, **flags}


def _cells(text: str, table: int) -> list[str]:
    section = text.split("## Table ")[table]
    row = next(line for line in section.splitlines() if line.startswith("| blurred "))
    return [c.strip() for c in row.strip("|").split(" | ")]


def test_measured_cells_show_the_figures_with_n():
    text = markdown(_metrics(EMOTIONS, DNA))
    for _, title in TABLE2_COLUMNS + TABLE3_COLUMNS:
        assert title in text
    t2, t3 = _cells(text, 2), _cells(text, 3)
    assert t2[4] == "0.612 (n=40, 7 classes)" and t2[5] == "0.046 (n=40)"
    assert t3[3] == "4.4 (n=40 pairs)" and t3[4] == "12.3 +/- 1.1 (n=40 pairs)"
    assert "HSEmotion enet_b0_8_va_mtl" in text and "Mugs ViT-B/16" in text


def test_skipped_and_random_cells_say_why_and_show_no_number():
    absent = _metrics(
        {"skipped": "emotions skipped: the HSEmotion weights /m/x.onnx are absent (veil models fetch --eval)"},
        {"skipped": "Visual DNA skipped: the Mugs ViT-B/16 file /m/vdna/w.pth is absent (veil models fetch --eval)"},
    )
    t2, t3 = _cells(markdown(absent), 2), _cells(markdown(absent), 3)
    assert t2[4] == t2[5] == "not computed: HSEmotion weights absent (veil models fetch --eval)"
    assert t3[3] == t3[4] == "not computed: Visual DNA's Mugs ViT-B/16 weights absent (veil models fetch --eval)"
    random = markdown(_metrics(EMOTIONS, DNA, emotions_random=True, vdna_random=True))
    assert _cells(random, 2)[4] == RANDOM_EMOTIONS and _cells(random, 3)[4] == RANDOM_VDNA
    assert "0.612" not in random and "0.046" not in random and "12.3" not in random and "4.4 (" not in random
    old = _metrics(EMOTIONS, DNA)  # metrics.json of an earlier veil: no such groups
    del old["runs"]["blurred"]["emotions"], old["runs"]["blurred"]["visual_dna"]
    assert _cells(markdown(old), 2)[4] == "not computed: not measured by this veil version"
