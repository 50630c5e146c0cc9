"""GPU-tier throughput: the worker's generation path against a naive diffusers baseline.

Builds the full-size SD 1.5 architecture (UNet 859.5M, VAE, CLIP ViT-L/14 text tower) with
random weights (the cost of Realistic Vision v5.1; images are noise), then in one run measures

  * the card's dense matmul rate (fp16 and bf16, 8192^3),
  * a naive baseline: diffusers' StableDiffusionPipeline with defaults, fp16, one image per call,
  * the worker's path (workers.gpu.generation.PortraitGenerator) at several batch sizes for both
    samplers,

and prints a markdown table: images/s, seconds per batch, peak GPU memory, and utilisation =
counted FLOPs (FlopCounterMode) / time / measured matmul rate.

    python benchmarks/gpu_throughput.py                   # on a CUDA machine
    python benchmarks/gpu_throughput.py --tiny            # CPU smoke run with tiny random models
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shared.settings import SchedulerName  # noqa: E402
from workers.gpu.generation import GenerationConfig, PortraitGenerator  # noqa: E402
from workers.gpu.schedulers import UNET_EVALS  # noqa: E402

#: generation-path variants measured against each other (GenerationConfig fields)
VARIANTS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"channels_last": True, "compile_mode": "max-autotune"},
    "cudagraphs": {"channels_last": True, "compile_mode": "reduce-overhead"},
}

PROMPT = "closeup portrait photo of a white 34 man, eyeglasses, smiling, wearing hat, "
NEGATIVE = "bald, bangs, goatee, heavy makeup, wearing lipstick, "


def full_size_components(device: torch.device, dtype: torch.dtype):
    """SD 1.5's architecture with random weights (configs as in the SD 1.5 / RV 5.1 checkpoints)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from shared.tiny_models import tiny_bpe, write_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu"))
    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    vocab, merges = tiny_bpe()
    write_tokenizer(folder, vocab, merges)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    scheduler_config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                        "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1}
    parts = [m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (unet, vae, text)]
    return (*parts, tokenizer, scheduler_config)


def tiny_components(device: torch.device, dtype: torch.dtype):
    from shared.tiny_models import write_tiny_models
    from workers.gpu.loading import load_sd_components

    folder = Path(tempfile.mkdtemp()) / "tiny"
    write_tiny_models(folder)
    c = load_sd_components(folder, device, dtype)
    return c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config


def count_flops(unet, vae, text_len: int, device, dtype) -> tuple[float, float]:
    """FLOPs of one UNet evaluation and one VAE decode, per image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    side = unet.config.sample_size
    x = torch.randn(1, 4, side, side, device=device, dtype=dtype)
    emb = torch.randn(1, text_len, unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            unet(x, 500, encoder_hidden_states=emb)
        unet_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.decode(x)
        vae_flops = fc.get_total_flops()
    return float(unet_flops), float(vae_flops)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> tuple[float, float]:
    """(seconds per call, peak memory GiB), after one warm-up call."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t0) / repeats, peak


def naive_baseline(parts, steps: int, device, repeats: int) -> float:
    """diffusers defaults, one image per call, faithful sampler (DPMSolverSDEScheduler Karras)."""
    from diffusers import DPMSolverSDEScheduler, StableDiffusionPipeline

    unet, vae, text, tokenizer, sched_config = parts
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DPMSolverSDEScheduler.from_config(sched_config, use_karras_sigmas=True),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    size = unet.config.sample_size * 8
    run = lambda: pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
                       generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    seconds, _ = timed(run, device, repeats)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (smoke test)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,4,8,16,32; --tiny: 1,2)")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--variants", default=None, help=f"comma-separated from {', '.join(VARIANTS)} "
                   "(default: all on CUDA, eager,channels_last with --tiny)")
    args = p.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    batches = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,4,8,16,32")).split(",")]
    repeats = args.repeats or (1 if args.tiny else 2)
    args.variants = args.variants or ("eager,channels_last" if device.type == "cpu" else ",".join(VARIANTS))
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    parts = (tiny_components if args.tiny else full_size_components)(device, dtype)
    unet, vae, text, tokenizer, sched_config = parts

    # 1. The card's matmul rate (the utilisation denominator)
    n = 1024 if device.type == "cpu" else 8192
    rate = max(matmul_rate(device, dtype, n), matmul_rate(device, torch.bfloat16, n) if device.type == "cuda" else 0)
    # 2. Counted cost per image
    # (the naive pipeline conditions on 77 tokens; Veil's path on prompt_chunks x 77)
    unet_flops, vae_flops = count_flops(unet, vae, tokenizer.model_max_length, device, dtype)
    chunked_unet_flops, _ = count_flops(unet, vae, GenerationConfig().prompt_chunks * tokenizer.model_max_length,
                                        device, dtype)
    per_image_naive = 2 * unet_flops * UNET_EVALS[SchedulerName.FAITHFUL](args.steps) + vae_flops
    per_image = {s: 2 * chunked_unet_flops * UNET_EVALS[s](args.steps) + vae_flops for s in SchedulerName}
    # 3. Naive baseline
    base_s = naive_baseline(parts, args.steps, device, repeats)
    rows = [dict(path="naive diffusers, batch 1", scheduler="faithful", batch=1, seconds=base_s, images_s=1 / base_s,
                 peak_gib=float("nan"), util=per_image_naive / base_s / rate)]
    # 4. The worker's path, by variant, sampler and batch size (then larger until out of memory)
    extra = [] if args.tiny else [48, 64, 96, 128]
    for variant in args.variants.split(","):
        config_extra = VARIANTS[variant]
        for scheduler in SchedulerName:
            config = GenerationConfig(scheduler=scheduler, steps=args.steps, image_size=unet.config.sample_size * 8,
                                      **config_extra)
            gen = PortraitGenerator(unet, vae, text, tokenizer, sched_config, config, device, dtype)
            for b in batches + extra:
                try:
                    seconds, peak = timed(lambda: gen([PROMPT] * b, [NEGATIVE] * b, list(range(b))), device, repeats)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    print(f"{variant} {scheduler.value} batch {b}: out of memory", file=sys.stderr)
                    break
                rows.append(dict(path=f"veil {variant}, batch {b}", scheduler=scheduler.value, batch=b,
                                 seconds=seconds, images_s=b / seconds, peak_gib=peak,
                                 util=per_image[scheduler] * b / seconds / rate))
            unet.to(memory_format=torch.contiguous_format)
            vae.to(memory_format=torch.contiguous_format)
            torch._dynamo.reset()

    # 5. Report
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    print(f"# {'TINY random models (smoke test, not the method)' if args.tiny else 'SD 1.5 architecture, random weights'}")
    print(f"device: {card}; torch {torch.__version__}; {dtype}; {datetime.date.today()}; steps {args.steps}")
    print(f"matmul rate: {rate / 1e12:.2f} TFLOP/s; counted per image: UNet eval {unet_flops / 1e9:.1f} GFLOP "
          f"(77 tokens; {chunked_unet_flops / 1e9:.1f} at {GenerationConfig().prompt_chunks}x77), "
          f"VAE decode {vae_flops / 1e9:.1f} GFLOP; naive {per_image_naive / 1e12:.2f} TFLOP, Veil faithful {per_image[SchedulerName.FAITHFUL] / 1e12:.2f} TFLOP, "
          f"fast {per_image[SchedulerName.FAST] / 1e12:.2f} TFLOP")
    print("\n| path | sampler | images/s | s/batch | peak GiB | utilisation | x naive |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['scheduler']} | {r['images_s']:.3f} | {r['seconds']:.2f} | {r['peak_gib']:.1f} | "
              f"{100 * r['util']:.1f}% | {r['images_s'] * base_s:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(dict(device=card, torch=torch.__version__, rate=rate, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
