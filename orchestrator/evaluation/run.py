"""``veil eval``: does it anonymize? Identity, attribute and quality metrics of one or more
anonymized runs against their originals (the paper's Tables I-III), as ``metrics.json``,
``pairs.csv`` and, with ``--html``, ``report.html``."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.weights import Component, is_tiny, missing_files
from orchestrator.evaluation import emotions as emotion_model
from orchestrator.evaluation import visual_dna
from orchestrator.evaluation.data import Pair, read_identities, read_pairs
from orchestrator.evaluation.data import gallery_files as read_gallery
from orchestrator.evaluation.downstream import emotions_table, read_celeba_attributes, table2
from orchestrator.evaluation.faces import Face, FaceReader
from orchestrator.evaluation.metrics import cosine_distances, reid_metrics
from orchestrator.evaluation.paper import markdown
from orchestrator.evaluation.quality import InceptionFeatures, fid_kid
from shared.devices import resolve_device
from shared.errors import InputError
from shared.imageio import decode_image
from shared.printable import printable
from shared.settings import EmbedderName, Settings
from workers.embedders import weights_missing

#: ``--paper``: the embedders of the paper's Table I, added where their weights are present
PAPER_EMBEDDERS = (EmbedderName.CLIP_IMAGE, EmbedderName.FACENET_VGGFACE2, EmbedderName.FACENET_CASIA)

TINY_NOTE = (
    "The attribute models (FACER, DeepFace) are tiny RANDOM test models: the attribute-preservation "
    "numbers mean nothing."
)
EVAL_TINY_NOTE = (
    "Emotions/valence-arousal (HSEmotion) and Visual DNA (Mugs ViT) ran on tiny RANDOM test models: "
    "their numbers mean nothing."
)
SD_TINY_NOTE = (
    "Method sd with tiny RANDOM test models: its outputs are noise, so its identity, attribute and "
    "quality numbers mean nothing about the paper's method."
)


@dataclass
class Run:
    """One anonymized run and its probes (the anonymized images), one per labelled input."""

    label: str
    folder: Path
    pairs: list[Pair]
    unmatched: int
    probes: list[Face | None] = field(default_factory=list)  # None: the run wrote no image
    metrics: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        methods = {p.method for p in self.pairs if p.method}
        return methods.pop() if len(methods) == 1 else ("mixed" if methods else "unknown")


def evaluate(
    originals: Path,
    anonymized: list[Path],
    identities_csv: Path,
    out: Path,
    settings: Settings,
    embedders: list[EmbedderName],
    *,
    html: bool = False,
    attributes: bool | None = None,
    progress: bool = True,
    celeba_attributes: Path | None = None,
    paper: bool = False,
) -> dict:
    """Writes ``out/metrics.json``, ``out/pairs.csv`` (and ``out/report.html``; with ``paper``
    ``out/paper_tables.md``); returns the metrics. ``attributes``: None = when FACER's and
    DeepFace's weights are present. ``paper``: also the paper's embedders where their weights are
    here (the others are listed in ``not_computed`` with the reason). ``celeba_attributes``:
    CelebA's ``list_attr_celeba.txt``, Table II's labels for the files it covers."""
    # 1. The labelled originals (the gallery) and each run's pairs
    identities = read_identities(identities_csv)
    celeba = read_celeba_attributes(celeba_attributes) if celeba_attributes else None
    if not originals.is_dir():
        raise InputError(f"ORIGINALS {str(originals)!r} is not a folder")
    gallery_files, missing, outside = read_gallery(originals, identities)
    runs = [
        Run(_label(folder, anonymized), folder, *read_pairs(originals, folder, identities)) for folder in anonymized
    ]
    models_dir = Path(settings.models_dir)
    not_computed: dict[str, str] = {}
    if paper:  # the paper's embedders, each where its weights are here
        for e in PAPER_EMBEDDERS:
            if e in embedders:
                continue
            if why := weights_missing(e, models_dir):
                not_computed[e.value] = why
            else:
                embedders = [*embedders, e]
    # Table II's emotions read with the attributes (--no-attributes skips both); Table III's Visual DNA
    emotions_why = "emotions skipped: --no-attributes" if attributes is False else None
    emotions_why = emotions_why or emotion_model.skipped_because(models_dir)
    vdna_why = visual_dna.skipped_because(models_dir)
    if attributes is None:
        attributes = not missing_files(models_dir, {Component.ATTRIBUTES, Component.DEMOGRAPHY})
    notes = [
        f"{len(names)} identities CSV file(s) {what}, left out: "
        + ", ".join(printable(n) for n in names[:10])
        + (" ..." if len(names) > 10 else "")
        for names, what in ((missing, "missing under ORIGINALS"), (outside, "outside ORIGINALS (not read)"))
        if names
    ]
    for note in notes:
        print(f"veil eval: {note}", file=sys.stderr)
    # 2. Read every face once: originals, then each run's outputs
    device = resolve_device(settings.device)
    inception = InceptionFeatures.load(models_dir, str(device))  # None: FID/KID say why they are skipped
    emotions = None if emotions_why else emotion_model.EmotionModel.load(models_dir)
    reader = FaceReader(
        settings, embedders, attributes=attributes, device=device, inception=inception, emotions=emotions
    )
    total = len(gallery_files) + sum(len(r.pairs) for r in runs)
    bar = tqdm(total=total, unit="img", desc="veil eval", disable=not progress, dynamic_ncols=True)
    fid = inception is not None
    gallery: list[Face] = []
    for f in gallery_files:
        gallery.append(reader.read(originals / f, keep_for_fid=fid))
        bar.update()
    for run in runs:
        for pair in run.pairs:
            probe = reader.read(pair.output, keep_for_fid=fid, match_box=pair.match_box) if pair.output else None
            run.probes.append(probe)
            bar.update()
    bar.close()
    # 3. Metrics per run: identity per embedder, attributes, quality
    with_face = [i for i, g in enumerate(gallery) if g.found]
    gallery_ids = [identities[gallery_files[i]] for i in with_face]
    dna = None if vdna_why else visual_dna.MugsVisualDna.load(models_dir, device)
    dnas = _visual_dna(runs, originals, dna, settings, progress) if dna is not None else {}
    for run in runs:
        run.metrics = _run_metrics(run, gallery, gallery_files, identities, embedders, models_dir, celeba)
        run.metrics["emotions"] = emotions_table(
            _emotion_pairs(run, gallery, gallery_files),
            emotions_why or "no output with the changed face found (or no face in its original)",
        )
        run.metrics["visual_dna"] = dnas.get(run.label) or {"skipped": vdna_why}
        if run.method == "sd" and is_tiny(models_dir):
            run.metrics["note"] = SD_TINY_NOTE
    if attributes and is_tiny(models_dir):
        notes.append(TINY_NOTE)
    if (emotions is not None or dna is not None) and is_tiny(models_dir):
        notes.append(EVAL_TINY_NOTE)
    if not attributes:
        notes.append("Attribute preservation skipped: FACER/DeepFace weights absent (veil models fetch).")
    metrics = {
        "originals": str(originals),
        "identities_csv": str(identities_csv),
        "detector": settings.detector.value,
        "embedders": [e.value for e in embedders],
        "n_gallery": len(gallery_files),
        "identities_missing": len(missing),
        "identities_outside": len(outside),
        "n_gallery_with_face": len(with_face),
        "n_identities": len(set(gallery_ids)),
        "gallery_no_face": [gallery_files[i] for i, g in enumerate(gallery) if not g.found],
        "notes": notes,
        "not_computed": not_computed,
        "attributes_random": bool(attributes and is_tiny(models_dir)),
        "emotions_random": bool(emotions is not None and is_tiny(models_dir)),
        "vdna_random": bool(dna is not None and is_tiny(models_dir)),
        "runs": {run.label: run.metrics for run in runs},
    }
    # 4. Write metrics.json, pairs.csv, the report
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_plain) + "\n")
    _write_pairs(out / "pairs.csv", runs, gallery, gallery_files, embedders)
    if paper:
        (out / "paper_tables.md").write_text(markdown(metrics))
    if html:
        from orchestrator.evaluation.report import write_report

        write_report(out / "report.html", metrics, runs, gallery, gallery_files, embedders, paper=paper)
    return metrics


def _label(folder: Path, all_folders: list[Path]) -> str:
    names = [f.name for f in all_folders]
    return folder.name if names.count(folder.name) == 1 else str(folder)


def _run_metrics(
    run: Run,
    gallery: list[Face],
    gallery_files: list[str],
    identities: dict[str, str],
    embedders: list[EmbedderName],
    models_dir: Path,
    celeba: dict | None = None,
) -> dict:
    statuses = Counter(p.status for p in run.pairs)
    done = [(p, f) for p, f in zip(run.pairs, run.probes, strict=True) if f is not None]
    faced = [(p, f) for p, f in done if f.found]
    m: dict = {
        "anonymized": str(run.folder),
        "method": run.method,
        "n_inputs": len(run.pairs),
        "status_counts": dict(statuses),
        "inputs_not_labelled": run.unmatched,
        "n_probes": len(done),
        "n_probes_with_face": len(faced),
        "no_face": len(done) - len(faced),
        "no_face_rate": (len(done) - len(faced)) / len(done) if done else None,
        "identity": {},
    }
    for e in embedders:
        m["identity"][e.value] = _identity(e.value, done, gallery, gallery_files, identities)
    why_none = (
        "attribute models not loaded (weights absent, or --no-attributes)"
        if not any(g.attributes for g in gallery)
        else "no output with the changed face found (nothing to read attributes from)"
    )
    m["attributes"] = table2(_attribute_pairs(faced, gallery, gallery_files), celeba, why_none)
    fid_originals = [gallery[gallery_files.index(p.file)].inception for p, _ in done if p.file in gallery_files]
    m["quality"] = fid_kid(
        [x for x in fid_originals if x is not None],
        [f.inception for _, f in done if f.inception is not None],
        models_dir,
    )
    return m


def _identity(
    embedder: str, done: list[tuple[Pair, Face]], gallery: list[Face], gallery_files: list[str], identities: dict
) -> dict:
    """Re-identification by one embedder: its gallery is every original it could embed (a face
    found, or any readable image for an image-level one), its probes every written output; an
    output it could not embed (no face left, or not the changed one) is a miss (``lost``)."""
    members = [i for i, g in enumerate(gallery) if embedder in g.embeddings]
    index_of = {gallery_files[i]: n for n, i in enumerate(members)}
    gallery_ids = [identities[gallery_files[i]] for i in members]
    embedded = [(p, f) for p, f in done if embedder in f.embeddings]
    lost = [(index_of.get(p.file, -1), p.identity) for p, f in done if embedder not in f.embeddings]
    g = np.stack([gallery[i].embeddings[embedder] for i in members]) if members else np.zeros((0, 1))
    q = np.stack([f.embeddings[embedder] for _, f in embedded]) if embedded else np.zeros((0, g.shape[1]))
    source = np.array([index_of.get(p.file, -1) for p, _ in embedded], dtype=int)
    ident = reid_metrics(cosine_distances(q, g), source, gallery_ids, [p.identity for p, _ in embedded], lost=lost)
    ident["n_probes"] = len(done)
    ident["n_identities"] = len(set(gallery_ids))
    return ident


def _emotion_pairs(run: Run, gallery: list[Face], gallery_files: list[str]) -> list:
    """(file, the original's HSEmotion reading, the output's) where both faces were read."""
    pairs = []
    for p, f in zip(run.pairs, run.probes, strict=True):
        original = gallery[gallery_files.index(p.file)] if p.file in gallery_files else None
        if f is not None and f.emotion is not None and original is not None and original.emotion is not None:
            pairs.append((p.file, original.emotion, f.emotion))
    return pairs


def _visual_dna(
    runs: list[Run], originals: Path, dna: visual_dna.MugsVisualDna, settings: Settings, progress: bool
) -> dict[str, dict]:
    """Each run's Visual DNA: every written output against its original (whole images, face or
    not, as FID/KID), per-image neuron histograms summed per side and compared pair by pair.
    Original by original: its histograms (40 MB) are made once and compared with every run's
    output of it, so none is kept longer than its pairs."""
    tallies = {run.label: visual_dna.Tally() for run in runs}
    unreadable: Counter[str] = Counter()
    by_file: dict[str, list[tuple[Run, Path]]] = {}
    for run in runs:
        for p, f in zip(run.pairs, run.probes, strict=True):
            if f is not None and p.output:
                by_file.setdefault(p.file, []).append((run, Path(p.output)))
    for file, outputs in tqdm(by_file.items(), unit="img", desc="Visual DNA", disable=not progress, dynamic_ncols=True):
        original = _decoded(originals / file, settings)
        if original is None:
            unreadable.update(run.label for run, _ in outputs)
            continue
        original_histograms = dna.histograms(original)
        for run, path in outputs:
            output = _decoded(path, settings)
            if output is None:
                unreadable[run.label] += 1
                continue
            tallies[run.label].add(original_histograms, dna.histograms(output))
    return {
        label: {**tally.result("no output written"), "unreadable": unreadable[label]}
        for label, tally in tallies.items()
    }


def _decoded(path: Path, settings: Settings) -> np.ndarray | None:
    """The image as ``FaceReader`` decodes it; None when it cannot be read."""
    try:
        return decode_image(path.read_bytes(), max_pixels=settings.max_image_pixels, max_side=2048)
    except Exception:  # noqa: BLE001 - an unreadable file is counted, not fatal
        return None


def _attribute_pairs(faced: list[tuple[Pair, Face]], gallery: list[Face], gallery_files: list[str]) -> list:
    pairs = []
    for p, f in faced:
        original = gallery[gallery_files.index(p.file)] if p.file in gallery_files else None
        if original is not None and original.attributes and f.attributes:
            pairs.append((p.file, original.attributes, f.attributes))
    return pairs


def _write_pairs(
    path: Path,
    runs: list[Run],
    gallery: list[Face],
    gallery_files: list[str],
    embedders: list[EmbedderName],
) -> None:
    # each embedder's gallery: the originals it embedded (a face found; any image for an image-level one)
    members = {e.value: [i for i, g in enumerate(gallery) if e.value in g.embeddings] for e in embedders}
    columns = ["run", "method", "file", "identity", "status", "output", "probe_face"]
    for e in embedders:
        columns += [f"{e.value}_distance_to_source", f"{e.value}_rank_of_source", f"{e.value}_nearest_other"]
    columns += ["gender", "gender_anon", "ethnicity", "ethnicity_anon", "age", "age_anon"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for run in runs:
            for pair, face in zip(run.pairs, run.probes, strict=True):
                row: list = [run.label, pair.method or "", pair.file, pair.identity, pair.status]
                row += [str(pair.output or ""), "" if face is None else int(face.found)]
                for e in embedders:
                    row += _ranks(face, pair, gallery, gallery_files, members[e.value], e.value)
                original = gallery[gallery_files.index(pair.file)] if pair.file in gallery_files else None
                a = original.attributes if original and original.attributes else {}
                b = face.attributes if face is not None and face.attributes else {}
                for key in ("gender", "ethnicity", "age"):
                    row += [a.get(key, ""), b.get(key, "")]
                w.writerow(row)


def _ranks(
    face: Face | None, pair: Pair, gallery: list[Face], gallery_files: list[str], members: list[int], embedder: str
) -> list:
    names = [gallery_files[i] for i in members]
    if face is None or embedder not in face.embeddings or pair.file not in names:
        return ["", "", ""]
    g = np.stack([gallery[i].embeddings[embedder] for i in members])
    d = cosine_distances(face.embeddings[embedder][None], g)[0]
    order = np.argsort(d, kind="stable")
    src = names.index(pair.file)
    rank = int(np.nonzero(order == src)[0][0]) + 1
    nearest_other = next((names[j] for j in order if j != src), "")
    return [round(float(d[src]), 4), rank, nearest_other]


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
