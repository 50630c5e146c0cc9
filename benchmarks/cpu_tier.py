"""CPU-tier capacity (issue 10 item 7): images/s per core of the CPU stage with FULL-SIZE random
weights in the real architectures (FACER's FaRL ViT-B/16 at 224, DeepFace's three VGG-Face onnx
graphs at their real sizes, MTCNN's real weights), on the real photos in ``VEIL_FACES_DIR``.

Per stage (decode, detect, FACER, DeepFace's face cut, age, gender, race, prompts) and the whole
``analyze``, each core count in its own process pinned to that many cores
(``os.sched_setaffinity``, ``torch.set_num_threads``, onnxruntime ``intra_op_num_threads``); then
the attribute models at batch 1 against larger batches of the same faces (does batching across
faces pay?). Prints a markdown table and writes JSON.

    veil models tiny --full-size /tmp/full        # once: ~2 GB of random full-size models
    python benchmarks/cpu_tier.py --models /tmp/full --cores 1,2 --images 12 --json out.json

The weights are random: this times the real architectures, never the method's output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: the stages timed one by one, in the order ``analyze`` runs them
STAGES = ("decode", "detect", "facer", "deepface_cut", "age", "gender", "race", "prompts")
#: GPU figures from BENCHMARKS.md (images/s on an H200) that the CPU tier has to feed
GPU_RATES = {
    "faithful, eager, batch 8 (the default)": 3.932,
    "whole GPU stage, faithful, batch 8": 3.118,
    "fast, torch.compile, batch 64": 14.215,
    "paper's ~49 TFLOP/image at 800 TFLOP/s (100% utilisation)": 800 / 49.1,
}


# ==============================================================================================
# one core count, in a pinned process
# ==============================================================================================


def pin(cores: int) -> list[int]:
    """Pin this process to ``cores`` of the CPUs it may use, before torch/onnxruntime start threads."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise SystemExit(f"asked for {cores} cores, this process may use {len(allowed)}")
    chosen = allowed[:cores]
    os.sched_setaffinity(0, chosen)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cores)
    return chosen


def photos(folder: Path, count: int) -> list[tuple[str, bytes]]:
    names = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return [(p.name, p.read_bytes()) for p in names[:count]]


class Clock:
    """Wall time and this process's CPU time (all its threads) since ``start``. On a shared,
    loaded machine the wall time stretches with other processes' load; the CPU time is the
    core-seconds this process really used (spinning thread pools included), so
    ``1 / cpu seconds per image`` is images/s per core."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_pinned(args: argparse.Namespace) -> dict[str, Any]:
    cpus = pin(args.one)
    import numpy as np
    import torch

    torch.set_num_threads(args.one)
    torch.set_num_interop_threads(1)

    from shared.imageio import decode_scaled
    from shared.messages import ImageTask
    from shared.prompts import CELEBA_LABELS, build_prompts
    from shared.settings import Settings
    from workers.cpu.attributes import AttributeModels
    from workers.cpu.detection import biggest_face, build_detector, detect_downscaled
    from workers.cpu.stage import CpuModels, analyze

    settings = Settings.from_env(models_dir=args.models)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    detector = build_detector(settings.detector, device, Path(settings.models_dir), settings.min_face_size)
    attributes = AttributeModels.load(Path(settings.models_dir), device, onnx_threads=args.one)
    load_s = time.perf_counter() - t0
    cpu = CpuModels(detector, attributes, settings)
    images = photos(Path(args.faces), args.images)
    task = ImageTask(job_id="bench", input_uri="/in/x.jpg", output_uri="/out/x.jpg", seed=0)
    clients = attributes.demography.clients

    # 1. Warm up every model once (first calls allocate and pick kernels)
    analyze(task, images[0][1], cpu)

    # 2. Each stage on its own, per image: (wall, cpu) seconds
    per_stage: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    faces: list[tuple[Any, np.ndarray]] = []  # (FaRL input, DeepFace input) of each face found
    no_face = 0
    for _name, data in images:
        clock = Clock()
        rgb, scale = decode_scaled(data, max_pixels=settings.max_image_pixels, max_side=2 * settings.detect_max_side)
        per_stage["decode"].append(clock.read())
        clock = Clock()
        found = detect_downscaled(detector, rgb, settings.detect_max_side, settings.min_face_size / scale)
        index = biggest_face(found)
        per_stage["detect"].append(clock.read())
        if index is None:
            no_face += 1
            continue
        box, landmarks = found.boxes[index], found.landmarks[index]
        clock = Clock()
        aligned = attributes.facer.aligned(rgb, landmarks)
        scores = attributes.facer.probabilities(aligned)[0]
        per_stage["facer"].append(clock.read())
        clock = Clock()
        batch = attributes.demography.model_input(attributes.demography.aligned_face(rgb, box, landmarks))
        per_stage["deepface_cut"].append(clock.read())
        outs = {}
        for graph in ("age", "gender", "race"):
            clock = Clock()
            outs[graph] = clients[graph].predict(batch[0])
            per_stage[graph].append(clock.read())
        clock = Clock()
        celeba = {k: float(v) for k, v in zip(CELEBA_LABELS, scores, strict=True)}
        build_prompts(celeba, age=int(np.asarray(outs["age"]).reshape(-1)[0]), ethnicity="white")
        per_stage["prompts"].append(clock.read())
        faces.append((aligned, batch))

    # 3. The whole analyze, image after image (what a worker process does)
    whole: list[tuple[float, float]] = []
    for _name, data in images:
        clock = Clock()
        try:
            analyze(task, data, cpu)
        except Exception:  # noqa: BLE001 - a no-face image costs its detection, as in a worker
            pass
        whole.append(clock.read())

    # 4. The attribute models at batch 1 against larger batches of the same faces
    sweep = args.batch_sizes and args.one in [int(c) for c in args.batch_cores.split(",")]
    batching = batch_sweep(args, faces, attributes, clients) if sweep else {}
    stage_s = {s: statistics.fmean(w for w, _ in v) if v else None for s, v in per_stage.items()}
    stage_cpu_s = {s: statistics.fmean(c for _, c in v) if v else None for s, v in per_stage.items()}
    analyze_s = statistics.fmean(w for w, _ in whole)
    analyze_cpu_s = statistics.fmean(c for _, c in whole)
    return {
        "cores": args.one,
        "cpus": cpus,
        "images": len(images),
        "faces": len(faces),
        "no_face": no_face,
        "load_s": round(load_s, 2),
        "stage_s": stage_s,
        "stage_cpu_s": stage_cpu_s,
        "analyze_s_per_image": analyze_s,
        "analyze_cpu_s_per_image": analyze_cpu_s,
        "images_per_s": 1 / analyze_s,
        "images_per_s_per_core_wall": 1 / analyze_s / args.one,
        "images_per_s_per_core": 1 / analyze_cpu_s,
        "batching": batching,
        "torch_threads": torch.get_num_threads(),
    }


def batch_sweep(args: argparse.Namespace, faces: list, attributes: Any, clients: dict) -> dict[str, Any]:
    """Seconds (wall and CPU) per face of each attribute model at each batch size, over the same
    faces (repeated to fill the largest batch)."""
    import numpy as np
    import torch

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    need = max(sizes)
    pool = [faces[i % len(faces)] for i in range(need)]
    farl_in = torch.cat([f[0] for f in pool])
    deep_in = np.concatenate([f[1] for f in pool])
    models = {
        "facer": lambda b: attributes.facer.probabilities(farl_in[:b]),
        **{g: (lambda b, c=clients[g]: c.predict(deep_in[:b])) for g in ("age", "gender", "race")},
    }
    out: dict[str, Any] = {}
    for name, run in models.items():
        run(1)  # warm this shape path
        row = {}
        for b in sizes:
            run(b)  # warm this batch shape
            reps = max(1, need // b)
            clock = Clock()
            for _ in range(reps):
                run(b)
            wall, cpu = clock.read()
            row[str(b)] = {"wall": wall / (reps * b), "cpu": cpu / (reps * b)}
        out[name] = row
    return out


# ==============================================================================================
# the driver: one pinned child per core count, then the tables
# ==============================================================================================


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        info["loadavg_before"] = os.getloadavg()
    except OSError:
        pass
    import onnxruntime
    import torch

    info.update(torch=torch.__version__, onnxruntime=onnxruntime.__version__)
    return info


def tables(result: dict[str, Any]) -> str:
    runs = result["runs"]
    cols = [f"{r['cores']} core{'s' if r['cores'] > 1 else ''}" for r in runs]
    lines = [
        "### Per stage: CPU seconds per image (wall seconds), mean over the photos; FACER and DeepFace per face",
        "",
        "| stage | " + " | ".join(cols) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for stage in STAGES:
        cells = [f"{r['stage_cpu_s'][stage]:.3f} ({r['stage_s'][stage]:.3f})" for r in runs]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"**{r['analyze_cpu_s_per_image']:.3f}** ({r['analyze_s_per_image']:.3f})" for r in runs]
    lines.append("| **whole analyze** | " + " | ".join(cells) + " |")
    lines.append("| images/s (wall) | " + " | ".join(f"{r['images_per_s']:.3f}" for r in runs) + " |")
    cells = [f"**{r['images_per_s_per_core']:.3f}** ({r['images_per_s_per_core_wall']:.3f})" for r in runs]
    lines.append("| images/s per core: 1 / CPU s (wall) | " + " | ".join(cells) + " |")
    best = max(r["images_per_s_per_core"] for r in runs)
    lines += ["", f"### Cores to feed one GPU at {best:.3f} images/s per core", ""]
    lines += ["| GPU rate | images/s | CPU cores |", "|---|---|---|"]
    for name, rate in GPU_RATES.items():
        lines.append(f"| {name} | {rate:.2f} | {rate / best:.0f} |")
    for r in runs:
        if not r["batching"]:
            continue
        sizes = list(next(iter(r["batching"].values())))
        title = f"### Batching across faces, {r['cores']} core(s): CPU seconds per face (speed-up over batch 1)"
        lines += ["", title, ""]
        lines += ["| model | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        for name, row in r["batching"].items():
            base = row[sizes[0]]["cpu"]
            cells = [f"{row[b]['cpu']:.3f} ({base / row[b]['cpu']:.2f}x)" for b in sizes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="folder written by `veil models tiny --full-size`")
    p.add_argument(
        "--write-models",
        action="store_true",
        help="first write FACER and DeepFace full-size (random) into --models (no generator: needs no diffusers)",
    )
    p.add_argument("--faces", default=os.environ.get("VEIL_FACES_DIR", str(ROOT.parent / "shared" / "faces")))
    p.add_argument("--cores", default="1,2", help="comma-separated core counts, one pinned process each")
    p.add_argument("--images", type=int, default=12, help="photos (sorted by name) per core count")
    p.add_argument("--batch-sizes", default="1,4,8,16", help="attribute-model batches to compare ('' to skip)")
    p.add_argument("--batch-cores", default="1", help="core counts that run the batch comparison")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the pinned child
    args = p.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(run_pinned(args)), flush=True)
        return 0
    if args.write_models:
        from models import tiny

        t0 = time.perf_counter()
        tiny.write_facer_attribute(Path(args.models), full_size=True)
        tiny.write_deepface(Path(args.models), full_size=True)
        print(f"wrote full-size random FACER + DeepFace in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    result: dict[str, Any] = {"machine": machine(), "models": args.models, "runs": []}
    for cores in [int(c) for c in args.cores.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(cores),
            "--models",
            args.models,
            "--faces",
            args.faces,
            "--images",
            str(args.images),
            "--batch-sizes",
            args.batch_sizes,
            "--batch-cores",
            args.batch_cores,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"the {cores}-core run failed ({proc.returncode})")
        run = json.loads(line[len("RESULT ") :])
        run["loadavg_after"] = os.getloadavg()
        result["runs"].append(run)
        print(f"{cores} core(s): {run['images_per_s_per_core']:.3f} images/s per core", file=sys.stderr, flush=True)
        if args.json:  # after each core count, so a cut-off run keeps what it measured
            Path(args.json).write_text(json.dumps(result, indent=2))
    print(tables(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
