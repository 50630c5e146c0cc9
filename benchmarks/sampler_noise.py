#!/usr/bin/env python
"""The faithful sampler's cost without a UNet (issue 19): 15 steps of DPM++ SDE Karras = 29
``scheduler.step`` calls on random model outputs of shape (B, 4, 64, 64), one torch thread,
through the project's own ``build_sampler`` and ``prepare`` (the noise scheme's whole per-batch
cost included: the exact scheme's draw, or diffusers' torchsde trees).

    PYTHONPATH=. python benchmarks/sampler_noise.py --batch 64 --json out.json [--scheme exact|tree] [--repeats 3]

Writes {"batch": B, "ms_per_image": median, "scheme": ..., "runs_ms_per_image": [...], ...}: the
median of ``--repeats`` timed calls after one untimed warm-up call (skipped with --no-warmup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from models.tiny import SCHEDULER_CONFIG
from shared.settings import SamplerName, SamplerNoise
from workers.gpu.schedulers import build_sampler

STEPS = 15
LATENT = (4, 64, 64)


def one_call(scheme: SamplerNoise, batch: int, call: int) -> tuple[float, float]:
    """Wall and process CPU seconds for one batch: set_timesteps, the scheme's prepare, 29 steps."""
    sampler = build_sampler(SamplerName.FAITHFUL, SCHEDULER_CONFIG, scheme)
    scheduler = sampler.scheduler
    inputs = torch.Generator().manual_seed(call)
    latents = torch.randn((batch, *LATENT), generator=inputs) * 14.6
    outputs = [torch.randn((batch, *LATENT), generator=inputs) for _ in range(2 * STEPS - 1)]
    seeds = [1000 * call + i for i in range(batch)]
    t0, c0 = time.perf_counter(), time.process_time()
    scheduler.set_timesteps(STEPS)
    scheduler.set_begin_index(0)
    sampler.prepare(scheduler, seeds, LATENT, torch.device("cpu"))
    for t, out in zip(scheduler.timesteps, outputs, strict=True):
        latents = scheduler.step(out, t, latents).prev_sample
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not torch.isfinite(latents).all():
        raise RuntimeError("non-finite latents")
    return seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--scheme", choices=[s.value for s in SamplerNoise], default=SamplerNoise.EXACT.value)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error("--repeats: at least 3 (the row is their median)")
    torch.set_num_threads(1)
    load_start = round(os.getloadavg()[0], 2)
    scheme = SamplerNoise(args.scheme)
    if not args.no_warmup:
        one_call(scheme, args.batch, 0)
    timed = [one_call(scheme, args.batch, i + 1) for i in range(args.repeats)]
    runs = [wall * 1000 / args.batch for wall, _ in timed]
    cpu = [c * 1000 / args.batch for _, c in timed]
    result = {
        "batch": args.batch,
        "ms_per_image": round(statistics.median(runs), 2),
        "scheme": scheme.value,
        "runs_ms_per_image": [round(r, 2) for r in runs],
        # process CPU time: what the work costs on a core, less the waits a loaded machine adds
        "cpu_ms_per_image": round(statistics.median(cpu), 2),
        "steps": STEPS,
        "scheduler_steps": 2 * STEPS - 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_1m": [load_start, round(os.getloadavg()[0], 2)],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
