"""The ``veil`` command.

    veil run INPUT OUTPUT [--device auto|cpu|cuda] [--batch-size B] [--seed S] [--limit N]
    veil models check | fetch | tiny DIR

Settings come from ``VEIL_*`` environment variables; command-line flags override them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from shared.errors import InputError, MissingWeightsError
from shared.settings import DetectorName, DeviceName, SchedulerName, Settings


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides = {k: v for k, v in extra.items() if v is not None}
    return Settings.from_env(**overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.embedded import run
    from shared.storage import open_storage

    settings = _settings(args, device=args.device, batch_size=args.batch_size, seed=args.seed,
                         scheduler=args.scheduler, detector=args.detector)
    summary = run(args.input, args.output, settings, open_storage(settings), limit=args.limit,
                  progress=not args.quiet)
    print(summary.text())
    return 0 if summary.ok else 1


def cmd_models_check(args: argparse.Namespace) -> int:
    from shared.weights import CATALOGUE, required_files

    settings = _settings(args)
    models_dir = Path(settings.models_dir)
    required = {wf.relpath for wf in required_files(models_dir)}
    print(f"models folder: {models_dir}  (VEIL_MODELS_DIR)")
    if (models_dir / "TINY_MODELS.txt").is_file():
        print("NOTE: this folder holds tiny RANDOM test models: images are noise, attributes random.")
    missing = 0
    for wf in CATALOGUE:
        path = models_dir / wf.relpath
        needed = "required" if wf.relpath in required else ("optional" if wf.optional else "not needed")
        if needed == "not needed" and not path.exists():
            continue
        there = "ok     " if path.is_file() else "MISSING"
        missing += int(not path.is_file() and needed == "required")
        print(f"  {there} {wf.component.value:<11} {needed:<9} {path}")
    print("  ok      detector    bundled   MTCNN (inside the facenet-pytorch wheel)")
    if missing:
        print(f"{missing} required file(s) missing: run  veil models fetch")
    return 1 if missing else 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from shared.fetch import fetch_missing
    from shared.weights import CATALOGUE

    settings = _settings(args)
    files = [wf for wf in CATALOGUE if args.optional or not wf.optional]
    results = fetch_missing(Path(settings.models_dir), files, progress=not args.quiet)
    for r in results:
        print(f"  {'kept   ' if r.skipped else 'fetched'} {r.path}  sha256 {r.sha256}")
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from shared.tiny_models import write_tiny_models

    paths = write_tiny_models(Path(args.dir))
    print(f"wrote {len(paths)} files of tiny RANDOM test models to {args.dir}")
    print("their images are noise and their attributes random; they exist to test the pipeline.")
    print(f"use them with:  export VEIL_MODELS_DIR={Path(args.dir).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description="Anonymize face images with foundation models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="anonymize a folder, glob, list file or s3:// prefix in one process")
    run.add_argument("input", help="folder (recursive), glob, text file of paths, or s3://bucket/prefix")
    run.add_argument("output", help="output folder or s3://bucket/prefix (mirrors INPUT's relative paths)")
    run.add_argument("--device", choices=[d.value for d in DeviceName])
    run.add_argument("--batch-size", type=int, help="prompts per diffusion call (VEIL_BATCH_SIZE)")
    run.add_argument("--seed", type=int, help="base seed; each image's seed derives from it and its key")
    run.add_argument("--limit", type=int, help="process at most N inputs")
    run.add_argument("--scheduler", choices=[s.value for s in SchedulerName])
    run.add_argument("--detector", choices=[d.value for d in DetectorName])
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    models = sub.add_parser("models", help="check, fetch or write model weights")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("check", help="list the weight files and whether each is there").set_defaults(func=cmd_models_check)
    fetch = msub.add_parser("fetch", help="download missing weights (needs internet)")
    fetch.add_argument("--optional", action="store_true", help="also fetch optional files (RetinaFace)")
    fetch.add_argument("-q", "--quiet", action="store_true")
    fetch.set_defaults(func=cmd_models_fetch)
    tiny = msub.add_parser("tiny", help="write tiny RANDOM test models (noise images) into DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_models_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local files; never reach a hub
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MissingWeightsError as exc:
        print(f"veil: {exc}", file=sys.stderr)
        return 2
    except (InputError, ValueError) as exc:
        print(f"veil: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
