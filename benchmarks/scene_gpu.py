"""Scene mode (issue 14) against portrait mode: what one face costs on the generation path.

Times ``PortraitGenerator`` as the GPU worker runs it: portraits (txt2img, the whole schedule)
against scene faces (img2img from a 512x512 crop at ``--strengths``: VAE encode + the tail of
the same schedule), at one batch size, both on the same weights, plus the CPU-side work of a
scene image (cutting the squares, feathered pasting) on a 12 MP photo with 8 faces. The full-size
SD 1.5 architecture with random weights (``gpu_throughput.full_size_components``: the cost of
Realistic Vision v5.1, not its images), or ``--tiny`` for the tiny random models on the CPU.

    python benchmarks/scene_gpu.py --json out.json                # a CUDA card, about 2-3 minutes
    python benchmarks/scene_gpu.py --tiny --steps 4 --batch 4     # CPU, tiny random models

On a lent machine (carry .whl as benchmarks/run_on_device.sh says):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 python3 benchmarks/scene_gpu.py --json $OUT/scene_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.gpu_throughput import NEGATIVE, PROMPT, full_size_components, tiny_components, timed  # noqa: E402
from shared.scene import cut, face_region, paste  # noqa: E402
from shared.settings import SamplerName  # noqa: E402
from workers.gpu.generation import GenerationConfig, PortraitGenerator  # noqa: E402
from workers.gpu.schedulers import UNET_EVALS  # noqa: E402


def img2img_unet_evals(sampler: SamplerName, steps: int, strength: float) -> int:
    """UNet evaluations of img2img at ``strength`` (per image, before guidance doubling): the
    schedule's tail of ``int(steps x strength)`` steps, as ``PortraitGenerator`` cuts it."""
    kept = min(max(int(steps * strength), 1), steps)
    if sampler is SamplerName.FAITHFUL:  # 2 per step but the schedule's last, from the step kept
        return 2 * kept - 1
    return kept


def composite_cost(faces: int = 8, side: int = 4000, size: int = 512) -> dict[str, float]:
    """CPU seconds to cut ``faces`` squares of a side x 0.75 side photo and paste them back."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    boxes = [[200 + 450 * i, 800, 200 + 450 * i + 300, 1200, 1.0] for i in range(faces)]
    regions = [face_region(b, 0.35, *photo.shape[:2]) for b in boxes]
    t0 = time.perf_counter()
    crops = [cut(photo, r, size) for r in regions]
    t1 = time.perf_counter()
    for r, c in zip(regions, crops, strict=True):
        paste(photo, c, r, 0.15)
    t2 = time.perf_counter()
    return {"cut_s_per_face": (t1 - t0) / faces, "paste_s_per_face": (t2 - t1) / faces}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models on the CPU")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--strengths", default="0.4,0.6,0.8")
    p.add_argument("--sampler", default="faithful", choices=[s.value for s in SamplerName])
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sampler = SamplerName(args.sampler)
    t_start = time.perf_counter()
    unet, vae, text, tok, sched = (tiny_components if args.tiny else full_size_components)(device, dtype)
    size = unet.config.sample_size * 8
    config = GenerationConfig(sampler=sampler, steps=args.steps, image_size=size)
    gen = PortraitGenerator(unet, vae, text, tok, sched, config, device, dtype)
    b = args.batch
    prompts, negatives, seeds = [PROMPT] * b, [NEGATIVE] * b, list(range(b))
    crops = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(b)]
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "tiny": args.tiny,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "steps": args.steps,
        "batch": b,
        "sampler": sampler.value,
        "image_size": size,
        "rows": [],
    }

    def row(name: str, seconds: float, peak: float, evals: int) -> None:
        r = {"path": name, "s_per_batch": seconds, "s_per_face": seconds / b, "peak_gib": peak, "unet_evals": evals}
        result["rows"].append(r)
        print(f"{name}: {seconds / b:.4f} s/face ({seconds:.3f} s/batch of {b}), {evals} UNet evals, "
              f"peak {peak:.1f} GiB  [{time.perf_counter() - t_start:.0f} s]", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    s, peak = timed(lambda: gen(prompts, negatives, seeds), device, args.repeats)
    row("portrait (txt2img, whole schedule)", s, peak, UNET_EVALS[sampler](args.steps))
    for strength in (float(v) for v in args.strengths.split(",")):
        s, peak = timed(lambda st=strength: gen(prompts, negatives, seeds, init_images=crops, strength=st),
                        device, args.repeats)
        row(f"scene face (img2img, strength {strength})", s, peak, img2img_unet_evals(sampler, args.steps, strength))
    result["composite_cpu"] = composite_cost(size=size)
    print(f"CPU compositing, 12 MP photo: {result['composite_cpu']}", file=sys.stderr)
    result["seconds"] = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
