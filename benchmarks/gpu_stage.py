#!/usr/bin/env python
"""The whole GPU stage against ``generate_batch`` alone (issue 19 item 3): how much the stage
adds around the diffusion calls (the sampler noise's build, encoding, writing, records).

``finish_batch`` (generate in chunks of ``--chunk``, store, records; what the Celery GPU task and
``veil run`` call) and ``generate_batch`` (the diffusion calls alone, same chunks) on the same
batch, each the median of ``--repeats`` timed calls after one untimed warm-up, alternating;
wall seconds and process CPU seconds (all threads; less sensitive to other processes' load).
Half the images are PNG, half JPEG, written to a local temp folder.

    PYTHONPATH=. python benchmarks/gpu_stage.py --json out.json [--batch 8] [--chunk 2] [--size 64] [--device cuda]

With ``--models DIR`` it loads those weights; by default the tiny random models (written to a
temp folder once): then the figures are about the plumbing, not the method, and the diffusion
calls are far cheaper than on real weights, so the stage's overhead is a larger share here.
The same file runs against an older checkout (``PYTHONPATH=/path/to/old``) for a before figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.tiny import write_tiny_models
from shared.devices import generation_dtype
from shared.messages import FaceAnalysis, PromptTask
from shared.settings import SamplerName, SamplerNoise, Settings
from shared.storage import open_storage
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.loading import load_sd_components
from workers.gpu.stage import finish_batch, generate_batch

try:
    from workers.gpu.gpumodels import GpuModels
except ImportError:  # a checkout before issue 21's split (the "before" figure)
    from workers.gpu.stage import GpuModels  # type: ignore[attr-defined,no-redef]

PROMPT = "closeup portrait photo of a white 30 man, smiling, "
NEGATIVE = "bald, goatee, "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=2, help="max_batch: images per diffusion call")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", type=Path)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (float16 there, as the GPU worker)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    # 1. The generator (faithful sampler, exact noise), on the CPU
    models = args.models
    if models is None:
        models = Path(tempfile.gettempdir()) / "veil-bench-tiny-models"
        if not (models / "TINY_MODELS.txt").is_file():
            write_tiny_models(models)
    device = torch.device(args.device)
    dtype = generation_dtype(device)
    c = load_sd_components(models, device, dtype)
    config = GenerationConfig(
        sampler=SamplerName.FAITHFUL, sampler_noise=SamplerNoise.EXACT, steps=args.steps, image_size=args.size
    )
    gen = PortraitGenerator(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config, config, device, dtype)
    gpu = GpuModels(gen, max_batch=args.chunk)
    # 2. The batch: half PNG, half JPEG
    out = Path(tempfile.mkdtemp(prefix="veil-bench-stage-"))
    analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={}, age=30, ethnicity="white",
                            deepface_gender="Man")  # fmt: skip
    tasks = [
        PromptTask(job_id="bench", input_uri=f"in/{i}.jpg", output_uri=str(out / f"{i}.{'png' if i % 2 else 'jpg'}"),
                   seed=i, prompt=PROMPT, negative_prompt=NEGATIVE, analysis=analysis, model_sha256={})
        for i in range(args.batch)
    ]  # fmt: skip
    storage = open_storage(Settings.from_env({}))

    def stage() -> None:
        done = finish_batch(tasks, gpu, storage)
        assert all(f.record is not None and f.record.status.value == "done" for f in done)

    def alone() -> None:
        assert len(generate_batch(tasks, gpu)) == len(tasks)

    # 3. Warm-up, then alternate the two so that load drifts hit both alike
    stage(), alone()
    runs: dict[str, list[float]] = {"stage": [], "generate_batch": []}
    cpu: dict[str, list[float]] = {"stage": [], "generate_batch": []}
    for _ in range(args.repeats):
        for name, fn in (("stage", stage), ("generate_batch", alone)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            runs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    stage_s, alone_s = statistics.median(runs["stage"]), statistics.median(runs["generate_batch"])
    stage_cpu, alone_cpu = statistics.median(cpu["stage"]), statistics.median(cpu["generate_batch"])
    result = {
        "batch": args.batch,
        "chunk": args.chunk,
        "size": args.size,
        "steps": args.steps,
        "models": "tiny random" if args.models is None else str(args.models),
        "device": str(device),
        "stage_s": round(stage_s, 4),
        "generate_batch_s": round(alone_s, 4),
        "stage_over_generate_pct": round(100 * (stage_s / alone_s - 1), 2),
        "runs_s": {k: [round(v, 4) for v in vs] for k, vs in runs.items()},
        # process CPU seconds (all threads): what the stage costs, less sensitive to other load
        "stage_cpu_s": round(stage_cpu, 4),
        "generate_batch_cpu_s": round(alone_cpu, 4),
        "stage_over_generate_cpu_pct": round(100 * (stage_cpu / alone_cpu - 1), 2),
        "runs_cpu_s": {k: [round(v, 4) for v in vs] for k, vs in cpu.items()},
        "code": str(Path(finish_batch.__code__.co_filename).resolve().parents[2]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": platform.node(),
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    keys = ("stage_s", "generate_batch_s", "stage_over_generate_pct", "stage_over_generate_cpu_pct")
    print(json.dumps({k: result[k] for k in keys}))


if __name__ == "__main__":
    main()
