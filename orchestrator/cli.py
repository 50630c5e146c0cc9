"""The ``veil`` command.

    veil run INPUT OUTPUT [--device auto|cpu|cuda] [--batch-size B] [--seed S] [--limit N] [--overwrite]
             [--sampler faithful|fast] [--detector mtcnn|retinaface] [--method sd|blur|pixelate|mask]
             [--mode portrait|scene] [--faces all|biggest] [--guard off|dlib|facenet] [--retry-failed] [--quiet]
    veil models check | fetch [--optional] [--eval] [--quiet] | tiny DIR [--full-size]
    veil submit s3://BUCKET/PREFIX --out s3://BUCKET/OUT [--name N] [--overwrite] [--method M] [--mode M]
                [--faces F] [--guard G]
    veil status JOB [--watch] [--interval S] [--failed] | veil jobs | veil cancel JOB
    veil retry JOB [--reason R] [--out O] | veil finalize JOB [--out O]
    veil feed
    veil worker cpu [--concurrency N] | veil worker gpu [--devices 0,1] [--one NAME]
    veil flower
    veil health [--max-age S] [--file PATH]
    veil exporter [--port P]
    veil eval ORIGINALS ANONYMIZED... --identities CSV --out DIR [--embedder E] [--html] [--no-attributes]
              [--device D] [--detector D] [--quiet] [--paper] [--celeba-attributes FILE]
    veil deadletter [-n|--count N] [--json] [--purge]

``veil --verbose COMMAND ...`` logs debug messages. Settings come from ``VEIL_*`` environment
variables; command-line flags override them. A value that fails validation is reported under the
name the user typed: the flag or the variable. The usage above is kept true against the parser
by ``tests/unit/test_cli.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from orchestrator.service_errors import EXIT_SERVICE, service_error
from shared import redact
from shared.errors import DiskFullError, InputError, MissingWeightsError, VeilError
from shared.printable import printable
from shared.quiet import quiet_third_party
from shared.settings import (
    ENV_PREFIX,
    DetectorName,
    DeviceName,
    EmbedderName,
    FaceCover,
    GuardName,
    Method,
    Mode,
    SamplerName,
    Settings,
)

#: pydantic error type -> what the value must be (its ``ctx`` fills the braces)
_RULES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "enum": "must be one of {expected}",
    "literal_error": "must be one of {expected}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
}


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--limit -1`` was accepted and did nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _settings(**extra: object) -> Settings:
    """Settings from ``VEIL_*`` and the flags in ``extra`` (``None``: flag not given)."""
    overrides = {k: v for k, v in extra.items() if v is not None}
    try:
        return Settings.from_env(None, **overrides)
    except ValidationError as exc:
        raise InputError(_explain(exc, set(overrides))) from None


def _explain(exc: ValidationError, flags: set[str]) -> str:
    """``--batch-size: must be >= 1 (got 0)``, or ``VEIL_STEPS: ...`` for a variable."""
    problems = []
    for err in exc.errors():
        if not err["loc"]:  # a rule across settings (a model validator): its message names them
            problems.append(str(err.get("ctx", {}).get("error") or err["msg"].removeprefix("Value error, ")))
            continue
        field = str(err["loc"][0])
        name = "--" + field.replace("_", "-") if field in flags else ENV_PREFIX + field.upper()
        rule = _RULES.get(err["type"])
        what = rule.format(**err.get("ctx", {})) if rule else err["msg"][:1].lower() + err["msg"][1:]
        problems.append(f"{name}: {what} (got {err.get('input')!r})")
    return "; ".join(problems)


def cmd_run(args: argparse.Namespace) -> int:
    from models.weights import tiny_warning
    from orchestrator.preflight import check_run
    from shared.storage import open_storage

    settings = _settings(
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        sampler=args.sampler,
        detector=args.detector,
        method=args.method,
        mode=args.mode,
        faces=args.faces,
        guard=args.guard,
    )
    # 1. Every check a mistake can fail, before torch and diffusers are imported (seconds, not a minute)
    storage = open_storage(settings)
    checked = check_run(args.input, args.output, settings, storage, overwrite=args.overwrite)
    if settings.method is Method.SD and (warning := tiny_warning(settings.models_dir)):
        print(warning, file=sys.stderr)
    # 2. The run
    from orchestrator.embedded import run

    try:
        summary = run(
            args.input,
            args.output,
            settings,
            storage,
            limit=args.limit,
            progress=not args.quiet,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
            checked=checked,
        )
    except KeyboardInterrupt:
        print(
            "\nveil run: interrupted; finished rows are in the manifest. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    print(summary.text())
    return 0 if summary.ok else 1


def cmd_models_check(args: argparse.Namespace) -> int:
    from models.weights import CATALOGUE, EVAL_COMPONENTS, required_files, tiny_warning

    settings = _settings()
    models_dir = Path(settings.models_dir)
    required = {wf.relpath for wf in required_files(models_dir)}
    print(f"models folder: {models_dir}  (VEIL_MODELS_DIR)")
    if warning := tiny_warning(models_dir):
        print(warning)
    missing = 0
    for wf in CATALOGUE:
        path = models_dir / wf.relpath
        needed = "required" if wf.relpath in required else ("optional" if wf.optional else "not needed")
        needed = "eval" if wf.component in EVAL_COMPONENTS else needed  # veil eval's, fetched by --eval
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
    from models.fetch import fetch_missing
    from models.weights import CATALOGUE, EVAL_COMPONENTS

    settings = _settings()
    files = [wf for wf in CATALOGUE if args.optional or not wf.optional]
    files = [wf for wf in files if args.eval or wf.component not in EVAL_COMPONENTS]
    results = fetch_missing(Path(settings.models_dir), files, progress=not args.quiet)
    for r in results:
        print(f"  {'kept   ' if r.skipped else 'fetched'} {r.path}  sha256 {r.sha256}")
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from models.tiny import write_tiny_models

    if Path(args.dir).exists() and not Path(args.dir).is_dir():
        raise InputError(f"DIR {args.dir!r} is an existing file: choose a folder (new or empty) for the test models")
    paths = write_tiny_models(Path(args.dir), full_size=args.full_size)
    size = "FULL-SIZE CPU-tier (FACER, DeepFace) and tiny generator" if args.full_size else "tiny"
    print(f"wrote {len(paths)} files of {size} RANDOM test models to {args.dir}")
    print("their images are noise and their attributes random; they exist to test the pipeline.")
    print(f"use them with:  export VEIL_MODELS_DIR={Path(args.dir).resolve()}")
    return 0


def _jobs(settings: Settings):  # noqa: ANN202 - shared.jobs.JobStore, imported late
    from shared.jobs import JobStore

    return JobStore.from_url(settings.jobs_url, settings.job_ttl_s, settings)


def cmd_submit(args: argparse.Namespace) -> int:
    from orchestrator.submit import submit
    from shared.storage import open_storage
    from workers.celery_app import configure

    settings = _settings(method=args.method, mode=args.mode, faces=args.faces, guard=args.guard)
    configure(settings)
    result = submit(
        args.source,
        args.out,
        settings,
        open_storage(settings),
        _jobs(settings),
        name=args.name,
        overwrite=args.overwrite,
    )
    print(result.job_id)
    if result.complete:
        print(f"job {args.name!r} was submitted whole already: nothing to add", file=sys.stderr)
        return 0
    if result.repeats:
        print(f"{result.repeats} input(s) listed more than once: each enqueued once", file=sys.stderr)
    for uri in result.unsafe:
        print(
            f"refused (unsafe_key or name_too_long, counted failed; veil status --failed): {printable(uri)}",
            file=sys.stderr,
        )
    print(
        f"{'resumed: ' if result.resumed else ''}submitted {result.count} keys ({result.skipped} already done) as job "
        f"{result.job_id}; watch with:  veil status {result.job_id} --watch",
        file=sys.stderr,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.status import show_status
    from shared import redisconn
    from workers.transport import queue_depth

    settings = _settings()
    broker = redisconn.client(settings.broker_url, settings)
    return show_status(
        _jobs(settings),
        args.job,
        watch=args.watch,
        interval=args.interval,
        failed=args.failed,
        depth=lambda: queue_depth(broker, settings),
    )


def cmd_jobs(args: argparse.Namespace) -> int:
    from orchestrator.status import list_jobs

    return list_jobs(_jobs(_settings()))


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.control import cancel_job
    from shared.storage import open_storage
    from workers.celery_app import configure

    settings = _settings()
    configure(settings)
    result = cancel_job(args.job, settings, _jobs(settings), open_storage(settings))
    if not result.found:
        print(f"veil: no job {args.job!r} (veil jobs lists them)", file=sys.stderr)
        return 2
    if not result.cancelled:
        print(f"job {args.job} had already ended: nothing cancelled", file=sys.stderr)
        return 1
    print(
        f"cancelled {args.job}: {result.removed_from_queues} message(s) removed from the queues; "
        f"summary {result.summary}"
    )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from orchestrator.control import retry_job
    from shared.storage import open_storage
    from workers.celery_app import configure

    settings = _settings()
    configure(settings)
    n = retry_job(args.job, settings, _jobs(settings), open_storage(settings), reason=args.reason, out=args.out)
    print(f"{n} failed key(s) of job {args.job} queued again; watch with:  veil status {args.job} --watch")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    """(Re)writes a job's ``_veil/JOB/manifest.jsonl`` and ``summary.json`` now, in this process."""
    from shared.storage import open_storage
    from workers.finalize import finalize_job

    settings = _settings()
    jobs = _jobs(settings)
    job = jobs.get(args.job)
    if job is None and not args.out:
        print(f"veil: no job {args.job!r} in Redis (expired?): give --out OUTPUT to rebuild from its sidecars",
              file=sys.stderr)  # fmt: skip
        return 2
    if job is not None and args.out and args.out.rstrip("/") != job.output.rstrip("/"):
        print(f"veil: job {args.job} writes to {job.output!r}, not {args.out!r}", file=sys.stderr)
        return 2

    def progress(listed: int, rows: int) -> None:
        print(f"job {args.job}: {listed} sidecars listed, {rows} rows of this job written", file=sys.stderr)

    result = finalize_job(
        args.job, jobs, open_storage(settings), settings, out=None if job else args.out, progress=progress
    )
    print(f"job {args.job}: {result.rows} manifest rows ({result.listed} sidecars listed) in {result.seconds:.1f} s; "
          f"summary {result.summary}")  # fmt: skip
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    import threading

    from workers.celery_app import configure
    from workers.feeder import Feeder

    settings = _settings()
    configure(settings)
    Feeder(settings).run(threading.Event())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``veil eval``."""
    from models.weights import tiny_warning
    from orchestrator.evaluation.run import evaluate

    settings = _settings(device=args.device, detector=args.detector)
    if warning := tiny_warning(settings.models_dir):
        print(warning, file=sys.stderr)
    embedders = [EmbedderName(e) for e in (args.embedder or [EmbedderName.DLIB.value])]
    metrics = evaluate(
        Path(args.originals),
        [Path(a) for a in args.anonymized],
        Path(args.identities),
        Path(args.out),
        settings,
        list(dict.fromkeys(embedders)),
        html=args.html,
        attributes=False if args.no_attributes else None,
        progress=not args.quiet,
        celeba_attributes=Path(args.celeba_attributes) if args.celeba_attributes else None,
        paper=args.paper,
    )
    for label, run in metrics["runs"].items():
        for emb, ident in run["identity"].items():
            print(
                f"{label} [{run['method']}] {emb}: reid_at_1 {_num(ident['reid_at_1'])} "
                f"(faced only {_num(ident['reid_at_1_faced'])}; chance {_num(ident['chance_at_1'])}), "
                f"reid_self_at_1 {_num(ident['reid_self_at_1'])}, map {_num(ident['map'])}, "
                f"map_at_50 {_num(ident['map_at_50'])}, n_probes {ident['n_probes']}, "
                f"no_face_rate {_num(run['no_face_rate'])}"
            )
    for note in metrics["notes"] + [r["note"] for r in metrics["runs"].values() if r.get("note")]:
        print(f"note: {note}", file=sys.stderr)
    written = (
        ["metrics.json", "pairs.csv"]
        + (["paper_tables.md"] if args.paper else [])
        + (["report.html"] if args.html else [])
    )
    print(f"wrote {', '.join(str(Path(args.out) / w) for w in written)}")
    return 0


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cmd_worker(args: argparse.Namespace) -> int:
    from models.weights import tiny_warning
    from workers import launch

    settings = _settings()
    if warning := tiny_warning(settings.models_dir):
        print(warning, file=sys.stderr)
    if args.tier == "cpu":
        launch.run_cpu_worker(settings, args.concurrency or os.cpu_count() or 1)
        return 0
    if args.one:
        launch.run_gpu_worker_here(settings, args.one)
        return 0
    return launch.run_gpu_workers(settings, args.devices)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the worker's health file is fresh (the pods' probes; workers/health.py)."""
    from workers.health import check

    path = Path(args.file) if args.file else _settings().health_file
    if path is None:
        raise InputError("no health file: set VEIL_HEALTH_FILE (the workers write it) or pass --file")
    healthy, line = check(path, args.max_age)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def cmd_flower(args: argparse.Namespace) -> int:
    from workers import launch

    launch.run_flower(_settings())
    return 0


# -- queue depth for Prometheus --------------------------------------------------------------


def cmd_exporter(args: argparse.Namespace) -> int:
    from workers.metrics import run_exporter

    settings = _settings()
    run_exporter(
        settings.broker_url, [settings.cpu_queue, settings.gpu_queue], args.port or settings.metrics_port, settings
    )
    return 0


def cmd_deadletter(args: argparse.Namespace) -> int:
    """Issue 23: the envelopes workers could not decode (``workers/envelopes.py``)."""
    import json

    from shared import redisconn
    from workers import envelopes

    settings = _settings()
    client = redisconn.client(settings.broker_url, settings)
    total, entries = envelopes.read(client, args.n)
    if args.json:
        print(json.dumps({"total": total, "entries": entries}))
    else:
        print(f"{total} dead letter(s) in {envelopes.DEAD_LETTERS}" + (f"; newest {len(entries)}:" if entries else ""))
        for e in entries:
            head, queue = printable(str(e.get("head", "")))[:200], printable(str(e.get("queue")))
            print(f"{e.get('time', 0):.0f}\t{queue}\t{e.get('reason')}\t{e.get('bytes')} B\t{head}")
    if args.purge:
        print(f"purged {envelopes.purge(client)} dead letter(s)", file=sys.stderr)
    return 0


def _add_exporter(sub: argparse._SubParsersAction) -> None:
    dead = sub.add_parser("deadletter", help="show (and --purge) broker messages workers could not decode")
    dead.add_argument("-n", "--count", dest="n", type=int, default=20, help="show the newest N (default 20)")
    dead.add_argument("--json", action="store_true", help="one JSON object: total and entries")
    dead.add_argument("--purge", action="store_true", help="delete them all after showing them")
    dead.set_defaults(func=cmd_deadletter)
    exporter = sub.add_parser("exporter", help="serve the queues' depth (veil_queue_depth) for Prometheus")
    exporter.add_argument("--port", type=int, help="HTTP port of /metrics (default: VEIL_METRICS_PORT)")
    exporter.set_defaults(func=cmd_exporter)


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint where a mistake has a usual cause."""

    command: str = ""

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        words = list(sys.argv[1:] if args is None else args)
        self.command = next((w for w in words if not w.startswith("-")), "")
        return super().parse_args(words, namespace)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments") and self.command in ("run", "submit"):
            message += (
                "\n  a glob is expanded by the shell into many arguments: quote it, as in  veil run 'photos/*.jpg' OUT"
            )
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="veil", description="Anonymize face images with foundation models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_distributed(sub)
    _add_models(sub)
    _add_eval(sub)
    _add_exporter(sub)
    return parser


def _add_eval(sub: argparse._SubParsersAction) -> None:
    """``veil eval``."""
    ev = sub.add_parser("eval", help="re-identification, attribute and quality metrics of anonymized runs")
    ev.add_argument("originals", help="folder of the original images (the gallery)")
    ev.add_argument("anonymized", nargs="+", help="veil run OUTPUT folder(s): their manifest pairs outputs and inputs")
    ev.add_argument("--identities", required=True, help="CSV with columns file,identity (file relative to ORIGINALS)")
    ev.add_argument("--out", required=True, help="folder for metrics.json, pairs.csv, report.html")
    ev.add_argument(
        "--embedder",
        action="append",
        choices=[e.value for e in EmbedderName] + ["clip"],  # clip: clip-face's earlier name
        help="embedder(s) for re-identification; repeat for several (default dlib); clip-image embeds the whole "
        "image (the paper's Table I), clip-face the face crop",
    )
    ev.add_argument("--html", action="store_true", help="also write a self-contained report.html")
    ev.add_argument(
        "--paper",
        action="store_true",
        help="also write paper_tables.md (the paper's Tables I-III, ours beside its figures) with the paper's "
        "embedders where their weights are present",
    )
    ev.add_argument(
        "--celeba-attributes",
        metavar="LIST_ATTR",
        help="CelebA's list_attr_celeba.txt: Table II's labels for the files it covers (else the originals' readings)",
    )
    ev.add_argument("--no-attributes", action="store_true", help="skip FACER/DeepFace attribute preservation")
    ev.add_argument("--device", choices=[d.value for d in DeviceName], help="where models run (VEIL_DEVICE)")
    ev.add_argument("--detector", choices=[d.value for d in DetectorName], help="face detector (VEIL_DETECTOR)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="anonymize a folder, glob, list file or s3:// prefix in one process")
    run.add_argument("input", help="folder (recursive), glob, text file of paths, or s3://bucket/prefix")
    run.add_argument("output", help="output folder or s3://bucket/prefix (mirrors INPUT's relative paths)")
    run.add_argument(
        "--device",
        choices=[d.value for d in DeviceName],
        help="where models run; auto = cuda if available, else cpu (VEIL_DEVICE)",
    )
    run.add_argument("--batch-size", type=int, help="prompts per diffusion call (VEIL_BATCH_SIZE)")
    run.add_argument("--seed", type=int, help="base seed; each image's seed derives from it and its key")
    run.add_argument("--limit", type=_positive_int, help="process at most N inputs (the rest are left, and said so)")
    run.add_argument(
        "--sampler",
        "--scheduler",
        dest="sampler",
        choices=[s.value for s in SamplerName],
        help="faithful = the paper's DPM++ SDE Karras (default); fast = DPM++ 2M SDE Karras, "
        "about half the UNet work (VEIL_SAMPLER; --scheduler is its old name)",
    )
    run.add_argument(
        "--detector",
        choices=[d.value for d in DetectorName],
        help="face detector (VEIL_DETECTOR; its settings: VEIL_MIN_FACE_SIZE, VEIL_MTCNN_THRESHOLDS, VEIL_DETECT_PAD)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every input the manifest already has a row for (default: skip them)",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="redo the inputs whose last manifest row says failed (default: a row of any status finishes an input)",
    )
    _add_method(run)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_scene_flags(run)
    run.set_defaults(func=cmd_run)


def _add_method(parser: argparse.ArgumentParser) -> None:
    """``--method`` of ``veil run`` and ``veil submit``."""
    parser.add_argument(
        "--method",
        choices=[m.value for m in Method],
        help="sd = the paper's generated portrait (default); blur, pixelate, mask = classical methods of the "
        "face box, finished on the CPU tier (VEIL_METHOD; strength: VEIL_BLUR_SIGMA, VEIL_PIXELATE_BLOCKS)",
    )


def _add_scene_flags(parser: argparse.ArgumentParser) -> None:
    """``--mode``, ``--faces`` and ``--guard`` (``veil run`` and ``veil submit``)."""
    parser.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        help="portrait = a new 512x512 portrait of the biggest face (the paper's, default); scene = the "
        "input, same size and format, with every face regenerated in place (VEIL_MODE)",
    )
    parser.add_argument(
        "--faces",
        choices=[f.value for f in FaceCover],
        help="which faces a classical method or scene mode changes: all (default) or the biggest only; "
        "a portrait is always of the biggest (VEIL_FACES)",
    )
    parser.add_argument(
        "--guard",
        choices=[g.value for g in GuardName],
        help="re-identification guard: a new face still closer than VEIL_GUARD_THRESHOLD to the original "
        "is regenerated (next seed, up to VEIL_GUARD_TRIES), then masked (VEIL_GUARD; default off)",
    )


def _add_distributed(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="enqueue a job on the distributed pipeline; prints its id")
    submit.add_argument("source", help="s3://bucket/prefix, a folder, or a manifest file of keys")
    submit.add_argument(
        "--out", required=True, help="where images and sidecars go: s3://bucket/prefix, or a folder every worker sees"
    )
    submit.add_argument("--name", help="a name for the job")
    submit.add_argument("--overwrite", action="store_true", help="redo keys whose output already exists")
    _add_method(submit)
    _add_scene_flags(submit)
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="counts, rate and ETA of a job")
    status.add_argument("job", help="the job id that veil submit printed")
    status.add_argument("--watch", action="store_true", help="refresh until the job is finished")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    status.add_argument("--failed", action="store_true", help="also list each failed key with its reason")
    status.set_defaults(func=cmd_status)
    sub.add_parser("jobs", help="list recent jobs (records expire VEIL_JOB_TTL_S after the end)").set_defaults(
        func=cmd_jobs
    )
    _add_job_control(sub)

    worker = sub.add_parser("worker", help="run a CPU-tier or GPU-tier worker")
    worker.add_argument("tier", choices=["cpu", "gpu"])
    worker.add_argument("--concurrency", type=int, help="cpu: worker processes (default: cores)")
    worker.add_argument("--devices", help="gpu: CUDA devices, e.g. 0,1 (default: all visible)")
    worker.add_argument("--one", help=argparse.SUPPRESS)  # internal: one GPU worker in this process
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("flower", help="Flower dashboard for both tiers, behind basic auth").set_defaults(func=cmd_flower)
    health = sub.add_parser("health", help="exit 0 if this worker's health file is fresh (Kubernetes probes)")
    health.add_argument("--max-age", type=float, default=60.0, help="seconds the file may be old (default 60)")
    health.add_argument("--file", help="the health file (default: VEIL_HEALTH_FILE)")
    health.set_defaults(func=cmd_health)


def _add_job_control(sub: argparse._SubParsersAction) -> None:
    cancel = sub.add_parser("cancel", help="stop a job: its remaining keys are dropped, other jobs untouched")
    cancel.add_argument("job", help="the job id that veil submit printed (veil jobs lists them)")
    cancel.set_defaults(func=cmd_cancel)
    retry = sub.add_parser("retry", help="queue a job's failed keys again (overwrite), with the job's options")
    retry.add_argument("job", help="the job id whose failed keys to submit again")
    retry.add_argument("--reason", help="only keys whose failure reason starts with this (e.g. storage)")
    retry.add_argument("--out", help="the job's OUTPUT: read its _veil/JOB/ summary when the record has expired")
    retry.set_defaults(func=cmd_retry)
    fin = sub.add_parser("finalize", help="(re)write a job's _veil/JOB/ manifest and summary now")
    fin.add_argument("job", help="the job id whose manifest and summary to write")
    fin.add_argument("--out", help="the job's OUTPUT, when its record has expired: rebuilt from its sidecars")
    fin.set_defaults(func=cmd_finalize)
    sub.add_parser("feed", help="run the feeder alone (CPU workers run one already)").set_defaults(func=cmd_feed)


def _add_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="check, fetch or write model weights")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("check", help="list the weight files and whether each is there").set_defaults(func=cmd_models_check)
    fetch = msub.add_parser("fetch", help="download missing weights (needs internet)")
    fetch.add_argument("--optional", action="store_true", help="also fetch optional files (RetinaFace)")
    fetch.add_argument(
        "--eval",
        action="store_true",
        help="also fetch veil eval's weights (FaceNet, CLIP, FID Inception, HSEmotion, Visual DNA's Mugs ViT)",
    )
    fetch.add_argument("-q", "--quiet", action="store_true")
    fetch.set_defaults(func=cmd_models_fetch)
    tiny = msub.add_parser("tiny", help="write tiny RANDOM test models (noise images) into DIR")
    tiny.add_argument("dir", help="a folder (new or empty) for the tiny RANDOM test models")
    tiny.add_argument(
        "--full-size",
        action="store_true",
        help="FACER and DeepFace at their real sizes (random weights, ~2 GB) to time the CPU tier",
    )
    tiny.set_defaults(func=cmd_models_tiny)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local files; never reach a hub
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_third_party(debug=args.verbose)  # third-party warnings only at -v
    redact.install()  # issue 23: no credential in any log line (botocore's debug logging at -v)
    try:
        return int(args.func(args) or 0)
    except MissingWeightsError as exc:
        print(f"veil: {exc}", file=sys.stderr)
        return 2
    except DiskFullError as exc:  # one line; rows written so far are whole, the run resumes
        print(f"veil: disk full: {exc}", file=sys.stderr)
        return 3
    except (InputError, ValueError) as exc:
        service = service_error(exc)  # INPUT or OUTPUT unreadable because S3 or Redis is not there
        print(f"veil: {service or exc}", file=sys.stderr)
        return EXIT_SERVICE if service else 2
    except VeilError as exc:  # e.g. a download that kept failing: say why, no traceback
        service = service_error(exc)  # Redis or S3 not there, or refusing the credentials
        print(f"veil: {service or exc}", file=sys.stderr)
        return EXIT_SERVICE if service else 1
    except Exception as exc:
        service = service_error(exc)
        if service is None:
            raise
        print(f"veil: {service}", file=sys.stderr)
        return EXIT_SERVICE


if __name__ == "__main__":
    sys.exit(main())
