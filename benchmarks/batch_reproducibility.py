#!/usr/bin/env python
"""Reproducibility of the generator with tiny models on the CPU: the same batch composition twice, and
different compositions (10 at once vs 5+5 vs singletons).

    PYTHONPATH=. python benchmarks/batch_reproducibility.py STEPS faithful|fast   # prints one JSON line
"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from models.tiny import write_tiny_models
from shared.settings import SamplerName
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.loading import load_sd_components

steps = int(sys.argv[1]); sched = SamplerName(sys.argv[2]); n = 10
d = Path(tempfile.gettempdir()) / "veil-reproducibility-tiny"
if not (d / "TINY_MODELS.txt").is_file():
    write_tiny_models(d)
c = load_sd_components(d, torch.device("cpu"), torch.float32)
gen = PortraitGenerator(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config,
                        GenerationConfig(sampler=sched, steps=steps), torch.device("cpu"), torch.float32)
P = [f"closeup portrait photo of a {e} {20 + 5 * i} {g}, smiling, " for i, (e, g) in enumerate(
    [("white", "man"), ("asian", "woman"), ("black", "man"), ("indian", "woman"), ("latino", "man")] * 2)]
N = [f"bald, goatee {i}, " for i in range(n)]
S = [1000 + 17 * i for i in range(n)]
def run(sizes):
    out, i = [], 0
    for b in sizes:
        out += gen(P[i:i + b], N[i:i + b], S[i:i + b]); i += b
    return np.stack(out).astype(int)
t = time.time()
a1 = run([5, 5]); a2 = run([5, 5]); b = run([10]); s1 = run([1] * 10)
def stats(x, y):
    d = np.abs(x - y).reshape(len(x), -1)
    return {"max": int(d.max()), "mean": float(d.mean()), "images_differing": int((d.max(1) > 0).sum()),
            "per_image_max": d.max(1).tolist()}
r = {"steps": steps, "sampler": sched.value, "torch": torch.__version__, "threads": torch.get_num_threads(),
     "same_5+5_twice": stats(a1, a2), "5+5_vs_10": stats(a1, b), "5+5_vs_1x10": stats(a1, s1), "10_vs_1x10": stats(b, s1),
     "seconds": time.time() - t}
print(json.dumps(r))
