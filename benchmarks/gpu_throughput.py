"""GPU-tier throughput: the worker's generation path against a naive diffusers baseline.

Builds the full-size SD 1.5 architecture (UNet 859.5M, VAE, CLIP ViT-L/14 text tower) with
random weights (the cost of Realistic Vision v5.1; images are noise), then in one run measures,
most important first, so that a run cut short by ``--budget-s`` still answers the main question:

  1. the card's dense matmul rate (fp16 and bf16, 8192^3) and the counted FLOPs per image,
  2. a naive baseline: diffusers' StableDiffusionPipeline with defaults, fp16, one image per call,
  3. the worker's path (``PortraitGenerator``) for both samplers at batch 1, 8, 16, 32, 64,
     eager and channels_last,
  4. the whole GPU stage at the best batch: ``generate_batch`` plus encoding and writing the
     batch's PNG and JPEG files as ``store_images`` does,
  5. where the time goes: UNet-only and VAE-only time against the whole batch, and the top
     kernels from ``torch.profiler``,
  6. torch.compile and CUDA graphs (compile mode "reduce-overhead") at batch 1 and the best batch,
  7. larger batches until out of memory (or the budget),

writing its table (markdown) and every raw number (JSON) after each row.

    python benchmarks/gpu_throughput.py --json out.json   # on a CUDA machine
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

from shared.settings import SamplerName  # noqa: E402
from workers.gpu.generation import GenerationConfig, PortraitGenerator  # noqa: E402
from workers.gpu.schedulers import UNET_EVALS  # noqa: E402

#: generation-path variants measured against each other (GenerationConfig fields)
VARIANTS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"channels_last": True, "compile_mode": "default"},
    "cudagraphs": {"channels_last": True, "compile_mode": "reduce-overhead"},
}
EAGER_VARIANTS = ("channels_last", "eager")
COMPILED_VARIANTS = ("compile", "cudagraphs")
#: a guess of one torch.compile of the UNet and VAE decoder, for the budget only
COMPILE_GUESS_S = 150.0

PROMPT = "closeup portrait photo of a white 34 man, eyeglasses, smiling, wearing hat, "
NEGATIVE = "bald, bangs, goatee, heavy makeup, wearing lipstick, "


# ---------------------------------------------------------------------------------- models
def full_size_components(device: torch.device, dtype: torch.dtype):
    """SD 1.5's architecture with random weights (configs as in the SD 1.5 / RV 5.1 checkpoints),
    initialised on the device itself (seconds instead of a minute of CPU init)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.tiny import tiny_bpe, write_tokenizer

    torch.manual_seed(0)
    with device:
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
    from models.tiny import write_tiny_models
    from workers.gpu.loading import load_sd_components

    folder = Path(tempfile.mkdtemp()) / "tiny"
    write_tiny_models(folder)
    c = load_sd_components(folder, device, dtype)
    return c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config


# ---------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def timed(fn, device, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """(seconds per call, peak memory GiB), after one warm-up call unless told otherwise."""
    if warmup:
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats, peak_gib(device)


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


# ---------------------------------------------------------------------------------- the run
class Bench:
    """Holds the components, the budget and the results; writes the report after each row."""

    def __init__(self, args, device: torch.device, dtype: torch.dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.t_start = time.perf_counter()
        self.parts = (tiny_components if args.tiny else full_size_components)(device, dtype)
        self.unet, self.vae, self.text, self.tokenizer, self.sched_config = self.parts
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.info: dict = {}
        self.s_per_image: dict[str, float] = {}  # last measured, per sampler, for budget guesses

    # -- budget
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def fits(self, what: str, seconds: float) -> bool:
        if self.elapsed() + seconds <= self.args.budget_s:
            return True
        self.skipped.append(f"{what} (needs ~{seconds:.0f} s, {self.args.budget_s - self.elapsed():.0f} s left)")
        print(f"skipped for the budget: {self.skipped[-1]}", file=sys.stderr, flush=True)
        return False

    def guess(self, scheduler: SamplerName, images: int) -> float:
        return self.s_per_image.get(scheduler.value, 1.0 if self.device.type == "cuda" else 5.0) * images

    # -- generators
    def generator(self, variant: str, scheduler: SamplerName) -> PortraitGenerator:
        self.unet.to(memory_format=torch.contiguous_format)
        self.vae.to(memory_format=torch.contiguous_format)
        config = GenerationConfig(sampler=scheduler, steps=self.args.steps,
                                  image_size=self.unet.config.sample_size * 8, **VARIANTS[variant])
        return PortraitGenerator(self.unet, self.vae, self.text, self.tokenizer, self.sched_config, config,
                                 self.device, self.dtype)

    def add_row(self, **row) -> None:
        self.rows.append(row)
        print(f"{row['path']} {row['scheduler']}: {row['images_s']:.3f} images/s, {row['seconds']:.2f} s/batch, "
              f"peak {row['peak_gib']:.1f} GiB, util {100 * row['util']:.1f}%  [{self.elapsed():.0f} s]",
              file=sys.stderr, flush=True)
        self.write()

    def measure(self, gen: PortraitGenerator, variant: str, scheduler: SamplerName, b: int,
                repeats: int, warmup: bool = True, kind: str = "generate") -> dict | None:
        try:
            seconds, peak = timed(lambda: gen([PROMPT] * b, [NEGATIVE] * b, list(range(b))), self.device,
                                  repeats, warmup)
        except torch.OutOfMemoryError:
            self.oom(f"{variant} {scheduler.value} batch {b}")
            return None
        self.s_per_image[scheduler.value] = seconds / b
        row = dict(kind=kind, path=f"veil {variant}, batch {b}", variant=variant, scheduler=scheduler.value,
                   batch=b, repeats=repeats, seconds=seconds, images_s=b / seconds, peak_gib=peak,
                   util=self.per_image[scheduler] * b / seconds / self.rate)
        self.add_row(**row)
        return row

    def oom(self, what: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.info.setdefault("out_of_memory", []).append(what)
        print(f"{what}: out of memory", file=sys.stderr, flush=True)

    # -- 1. ceilings and counted cost
    def ceilings(self) -> None:
        device, dtype, steps = self.device, self.dtype, self.args.steps
        n = 1024 if device.type == "cpu" else 8192
        rates = {str(dtype): matmul_rate(device, dtype, n)}
        if device.type == "cuda":
            rates[str(torch.bfloat16)] = matmul_rate(device, torch.bfloat16, n)
        self.rate = max(rates.values())
        unet_flops, vae_flops = count_flops(self.unet, self.vae, self.tokenizer.model_max_length, device, dtype)
        chunked, _ = count_flops(self.unet, self.vae, GenerationConfig().prompt_chunks * self.tokenizer.model_max_length,
                                 device, dtype)
        self.per_image_naive = 2 * unet_flops * UNET_EVALS[SamplerName.FAITHFUL](steps) + vae_flops
        self.per_image = {s: 2 * chunked * UNET_EVALS[s](steps) + vae_flops for s in SamplerName}
        self.info.update(matmul_rates=rates, unet_flops_77=unet_flops, unet_flops_chunked=chunked,
                         vae_flops=vae_flops, per_image_naive=self.per_image_naive,
                         per_image={s.value: f for s, f in self.per_image.items()})

    # -- 2. naive baseline
    def naive(self) -> None:
        """diffusers defaults, one image per call, faithful sampler (DPMSolverSDEScheduler Karras)."""
        from diffusers import DPMSolverSDEScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text, tokenizer=self.tokenizer, unet=self.unet,
                                       scheduler=DPMSolverSDEScheduler.from_config(self.sched_config,
                                                                                   use_karras_sigmas=True),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        size = self.unet.config.sample_size * 8
        run = lambda: pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=self.args.steps, height=size,
                           width=size, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
        self.base_s, peak = timed(run, self.device, self.args.repeats)
        self.add_row(kind="naive", path="naive diffusers, batch 1", variant="naive", scheduler="faithful", batch=1,
                     repeats=self.args.repeats, seconds=self.base_s, images_s=1 / self.base_s, peak_gib=peak,
                     util=self.per_image_naive / self.base_s / self.rate)

    # -- 3. eager variants, every batch size
    def eager_sweep(self) -> None:
        for variant in [v for v in EAGER_VARIANTS if v in self.variants]:
            for scheduler in self.samplers:
                gen = self.generator(variant, scheduler)
                for b in self.batches:
                    if not self.fits(f"{variant} {scheduler.value} batch {b}",
                                     self.guess(scheduler, b * (1 + self.args.repeats))):
                        continue
                    self.measure(gen, variant, scheduler, b, self.args.repeats)

    def best(self, scheduler: SamplerName, kind: str = "generate") -> dict | None:
        rows = [r for r in self.rows if r["kind"] == kind and r["scheduler"] == scheduler.value]
        return max(rows, key=lambda r: r["images_s"]) if rows else None

    # -- 4. the whole GPU stage: generate_batch + encode and write the batch
    def whole_stage(self) -> None:
        from shared.messages import FaceAnalysis, PromptTask
        from shared.storage import LocalBackend
        from workers.gpu.batching import store_images
        from workers.gpu.gpumodels import GpuModels
        from workers.gpu.stage import generate_batch

        best = self.best(SamplerName.FAITHFUL)
        if best is None or not self.fits("whole GPU stage", self.guess(SamplerName.FAITHFUL, 2 * best["batch"])):
            return
        b, variant = best["batch"], best["variant"]
        gpu = GpuModels(self.generator(variant, SamplerName.FAITHFUL))
        out = Path(tempfile.mkdtemp())
        analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={}, age=30, ethnicity="white", deepface_gender="Man")
        tasks = [PromptTask(job_id="bench", input_uri=f"in/{i}.jpg", output_uri=str(out / f"{i}.{'png' if i % 2 else 'jpg'}"),
                            seed=i, prompt=PROMPT, negative_prompt=NEGATIVE, analysis=analysis, model_sha256={})
                 for i in range(b)]
        backend = LocalBackend()
        timings: dict[str, float] = {}

        def stage():
            t0 = time.perf_counter()
            images = generate_batch(tasks, gpu)
            t1 = time.perf_counter()
            errors = store_images(tasks, images, backend)
            assert not any(errors), errors
            timings.update(generate=t1 - t0, encode=time.perf_counter() - t1)

        seconds, peak = timed(stage, self.device, 1)
        self.add_row(kind="stage", path=f"whole GPU stage ({variant}, batch {b}, half PNG half JPEG)", variant=variant,
                     scheduler="faithful", batch=b, repeats=1, seconds=seconds, images_s=b / seconds, peak_gib=peak,
                     util=self.per_image[SamplerName.FAITHFUL] * b / seconds / self.rate,
                     generate_s=timings["generate"], encode_s=timings["encode"])

    # -- 5. where the time goes
    def breakdown(self) -> None:
        best = self.best(SamplerName.FAITHFUL)
        if best is None or not self.fits("breakdown and profile", self.guess(SamplerName.FAITHFUL, 3 * best["batch"])):
            return
        b, variant = best["batch"], best["variant"]
        gen = self.generator(variant, SamplerName.FAITHFUL)
        fmt = torch.channels_last if VARIANTS[variant].get("channels_last") else torch.contiguous_format
        side = self.unet.config.sample_size
        x = torch.randn(2 * b, 4, side, side, device=self.device, dtype=self.dtype).to(memory_format=fmt)
        emb = torch.randn(2 * b, gen.config.prompt_chunks * 77, self.unet.config.cross_attention_dim,
                          device=self.device, dtype=self.dtype)
        evals = UNET_EVALS[SamplerName.FAITHFUL](self.args.steps)
        with torch.inference_mode():
            unet_s, _ = timed(lambda: [self.unet(x, 500, encoder_hidden_states=emb) for _ in range(evals)],
                              self.device, 1)
            vae_s, _ = timed(lambda: self.vae.decode(x[:b]), self.device, 1)
        whole = best["seconds"]
        self.info["breakdown"] = dict(variant=variant, batch=b, whole_s=whole, unet_s=unet_s, vae_s=vae_s,
                                      rest_s=whole - unet_s - vae_s, unet_evals=evals,
                                      unet_util=2 * self.info["unet_flops_chunked"] * b * evals / unet_s / self.rate)
        print(f"breakdown: {self.info['breakdown']}", file=sys.stderr, flush=True)
        self.profile(gen, b)
        self.write()

    def profile(self, gen: PortraitGenerator, b: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            gen([PROMPT] * b, [NEGATIVE] * b, list(range(b)))
            sync(self.device)
        averages = prof.key_averages()
        sort = "self_cpu_time_total"
        if self.device.type == "cuda":
            sort = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
        table = averages.table(sort_by=sort, row_limit=25)
        self.info["profile_top"] = table
        if self.args.json:
            self.args.json.with_suffix(".profile.txt").write_text(table)

    # -- 6. torch.compile and CUDA graphs
    def compiled(self) -> None:
        torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per batch size
        torch._dynamo.config.cache_size_limit = 16
        best = self.best(SamplerName.FAITHFUL)
        big = best["batch"] if best else max(self.batches)
        for variant in [v for v in COMPILED_VARIANTS if v in self.variants]:
            for b in dict.fromkeys([big, 1] if variant == "cudagraphs" else [big]):
                for scheduler in self.samplers:
                    first = scheduler is self.samplers[0]
                    cost = self.guess(scheduler, b * (1 + self.args.repeats)) + (COMPILE_GUESS_S if first else 0)
                    if not self.fits(f"{variant} {scheduler.value} batch {b}", cost):
                        continue
                    self.measure(self.generator(variant, scheduler), variant, scheduler, b, self.args.repeats)
            torch._dynamo.reset()

    # -- 7. larger batches until out of memory
    def until_oom(self) -> None:
        best = self.best(SamplerName.FAITHFUL)
        if best is None or best["variant"] not in EAGER_VARIANTS:
            best = max((r for r in self.rows if r["variant"] in EAGER_VARIANTS and r["scheduler"] == "faithful"),
                       key=lambda r: r["images_s"], default=None)
        if best is None:
            return
        gen = self.generator(best["variant"], SamplerName.FAITHFUL)
        b = max(self.batches)
        while True:
            b *= 2
            if not self.fits(f"{best['variant']} faithful batch {b}", self.guess(SamplerName.FAITHFUL, b)):
                return
            # one run, no warm-up: the point is whether it fits and what it peaks at
            if self.measure(gen, best["variant"], SamplerName.FAITHFUL, b, 1, warmup=False) is None:
                return

    # -- report
    def write(self) -> None:
        card = torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor() or "CPU"
        if self.args.json:
            import diffusers
            import transformers
            self.args.json.write_text(json.dumps(dict(
                device=card, torch=torch.__version__, diffusers=diffusers.__version__,
                transformers=transformers.__version__, date=str(datetime.date.today()), dtype=str(self.dtype),
                steps=self.args.steps, tiny=self.args.tiny, rate=getattr(self, "rate", None),
                elapsed_s=self.elapsed(), rows=self.rows, skipped=self.skipped,
                info={k: v for k, v in self.info.items() if k != "profile_top"}), indent=1))

    def table(self) -> str:
        card = torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor() or "CPU"
        import diffusers
        i = self.info
        lines = [f"# {'TINY random models (smoke test, not the method)' if self.args.tiny else 'SD 1.5 architecture, random weights'}",
                 f"device: {card}; torch {torch.__version__}; diffusers {diffusers.__version__}; {self.dtype}; "
                 f"{datetime.date.today()}; steps {self.args.steps}",
                 f"matmul rate: {self.rate / 1e12:.2f} TFLOP/s (best of "
                 + ", ".join(f"{k} {v / 1e12:.1f}" for k, v in i["matmul_rates"].items())
                 + f"); counted per image: UNet eval {i['unet_flops_77'] / 1e9:.1f} GFLOP (77 tokens; "
                 f"{i['unet_flops_chunked'] / 1e9:.1f} at {GenerationConfig().prompt_chunks}x77), VAE decode "
                 f"{i['vae_flops'] / 1e9:.1f} GFLOP; naive {self.per_image_naive / 1e12:.2f} TFLOP, Veil faithful "
                 f"{self.per_image[SamplerName.FAITHFUL] / 1e12:.2f} TFLOP, fast {self.per_image[SamplerName.FAST] / 1e12:.2f} TFLOP",
                 "", "| path | sampler | images/s | s/batch | peak GiB | utilisation | x naive |", "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['path']} | {r['scheduler']} | {r['images_s']:.3f} | {r['seconds']:.2f} | "
                         f"{r['peak_gib']:.1f} | {100 * r['util']:.1f}% | {r['images_s'] * self.base_s:.2f} |")
        if "breakdown" in i:
            d = i["breakdown"]
            lines.append(f"\nwhere the time goes ({d['variant']}, faithful, batch {d['batch']}): whole {d['whole_s']:.2f} s; "
                         f"{d['unet_evals']} UNet evaluations alone {d['unet_s']:.2f} s ({100 * d['unet_util']:.1f}% util); "
                         f"VAE decode {d['vae_s']:.2f} s; everything else {d['rest_s']:.2f} s")
        for r in self.rows:
            if r["kind"] == "stage":
                lines.append(f"whole GPU stage: generate_batch {r['generate_s']:.2f} s + encode/write {r['encode_s']:.2f} s")
        lines += [f"out of memory: {w}" for w in i.get("out_of_memory", [])]
        lines += [f"skipped (budget): {s}" for s in self.skipped]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (smoke test)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,16,32,64; --tiny: 1,2)")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=1, help="timed calls per row, after one warm-up call")
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="skip what would not finish within this many seconds of the start")
    p.add_argument("--json", type=Path, help="write every raw number here as JSON (after each row)")
    p.add_argument("--variants", default=None, help=f"comma-separated from {', '.join(VARIANTS)} "
                   "(default: all on CUDA, eager,channels_last with --tiny)")
    p.add_argument("--samplers", default="faithful,fast", help="comma-separated from "
                   + ", ".join(s.value for s in SamplerName))
    p.add_argument("--no-stage", action="store_true", help="skip the whole-GPU-stage row")
    p.add_argument("--no-profile", action="store_true", help="skip the breakdown and torch.profiler step")
    p.add_argument("--until-oom", action="store_true", help="double the batch past the largest until out of memory")
    args = p.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    variants = (args.variants or ("eager,channels_last" if device.type == "cpu" else ",".join(VARIANTS))).split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}")

    bench = Bench(args, device, dtype)
    bench.variants = variants
    bench.samplers = [SamplerName(v) for v in args.samplers.split(",")]
    bench.batches = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,8,16,32,64")).split(",")]
    # 1. ceilings and counted cost  2. naive baseline  3. eager variants
    bench.ceilings()
    bench.naive()
    bench.eager_sweep()
    # 4. whole stage  5. where the time goes
    if not args.no_stage:
        bench.whole_stage()
    if not args.no_profile:
        bench.breakdown()
    # 6. compiled variants  7. larger batches
    bench.compiled()
    if args.until_oom:
        bench.until_oom()
    bench.write()
    if "profile_top" in bench.info:
        print("top kernels (one faithful batch at the best size):\n" + bench.info["profile_top"])
    table = bench.table()
    if args.json:
        args.json.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
