"""``veil run``: the whole method in one process, no servers.

It calls the same stage functions as the Celery workers: a background thread reads and
analyses inputs (the CPU tier's work) while the main thread generates full batches (the GPU
tier's), so inputs without a face do not shrink the diffusion batches. The manifest is appended a batch at a
time (flushed and fsynced), so a crash loses at most the batch in flight; running the same command
again skips every input that has a row (``shared.keys.is_finished``: any outcome finishes a key,
as a sidecar does for ``veil submit``; ``--retry-failed`` redoes the failed ones).

INPUT is listed by the very listing ``veil submit`` uses (``orchestrator/listing.py``: an S3
prefix page by page, a list file in chunks), checked whole before any model loads, and each
key's task is built by ``shared.keys.task_for`` from a ``JobSpec`` made for the run, as the
feeder builds it: nothing per key is held but 8-byte digests.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from orchestrator.listing import Listing, planned_pages
from orchestrator.outputcheck import stop_if_disk_full
from orchestrator.outputlock import output_lock
from orchestrator.preflight import Checked, check_run
from shared.devices import resolve_device
from shared.diskio import append_whole
from shared.errors import call_with_retries
from shared.inputfiles import read_input
from shared.keys import digest, is_finished
from shared.messages import ImageTask, JobSpec, PromptTask, ResultRecord, Status
from shared.results import error_record, refused_record
from shared.settings import Settings
from shared.storage import Storage, is_local, join_uri
from workers.cpu.classical import is_classical
from workers.cpu.stage import CpuModels, analyze, anonymize_classical
from workers.gpu.batching import Finished
from workers.gpu.gpumodels import GpuModels
from workers.gpu.stage import finish_batch

MANIFEST = "manifest.jsonl"


@dataclass
class RunSummary:
    counts: Counter = field(default_factory=Counter)
    skipped: int = 0
    repeats: int = 0  # inputs listed more than once, processed once
    limited: int | None = None  # --limit N reached with inputs left over
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    faces_per_image: Counter = field(default_factory=Counter)  # faces changed -> done images with that many
    guard_checked: int = 0  # faces the re-identification guard judged
    guard_masked: Counter = field(default_factory=Counter)  # faces still re-identifying, masked -> images

    @property
    def ok(self) -> bool:
        return self.counts[Status.FAILED.value] == 0

    def count(self, record: ResultRecord) -> None:
        """One key's row: its outcome, and for a done one its faces and the guard's verdicts."""
        self.counts[record.status.value] += 1
        if record.status is not Status.DONE:
            return
        faces = record.faces if record.faces is not None else []
        self.faces_per_image[len(faces) if record.faces is not None else int(record.face_box is not None)] += 1
        judged = [f.guard for f in faces if f.guard is not None]
        self.guard_checked += len(judged)
        if masked := sum(1 for g in judged if not g.passed):
            self.guard_masked[masked] += 1

    def faces_text(self) -> str:
        """``faces: 9 changed in 3 images (1 face: 1 image, 2 faces: 1 image, 6 faces: 1 image)``,
        and the guard's outcome when it ran; empty when no image was done."""
        images = sum(self.faces_per_image.values())
        if not images:
            return ""
        total = sum(n * k for n, k in self.faces_per_image.items())
        spread = ", ".join(f"{_n(n, 'face')}: {_n(k, 'image')}" for n, k in sorted(self.faces_per_image.items()))
        text = f"\n  faces: {total} changed in {_n(images, 'image')} ({spread})"
        if self.guard_checked:
            masked, in_images = sum(n * k for n, k in self.guard_masked.items()), sum(self.guard_masked.values())
            text += (
                f"\n  guard: {_n(self.guard_checked, 'face')} judged, {masked} still re-identified and masked "
                f"(in {_n(in_images, 'image')}; the rows' faces[].guard says which)"
            )
        return text

    def text(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing to do"
        rate = f"{total / self.seconds:.2f} images/s" if self.seconds > 0 and total else ""
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(self.stage_seconds.items()))
        return (
            f"veil run: {total} processed ({parts}); {self.skipped} already done; "
            + (f"{self.repeats} listed twice or more, processed once; " if self.repeats else "")
            + (f"stopped at --limit {self.limited}: later inputs not processed; " if self.limited else "")
            + f"{self.seconds:.1f}s {rate}"
            + self.faces_text()
            + f"\n  time by stage: {stages}"
        )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


class Manifest:
    """``manifest.jsonl`` under OUTPUT: one row per input; the last row for an input wins.

    Locally rows are appended and fsynced batch by batch. Object storage has no append, so
    each batch's rows go to their own object under ``manifest.parts/`` (linear cost, nothing
    rewritten), and ``close`` folds the parts, in order, into ``manifest.jsonl``. A crashed
    run's parts are read on the next run and folded in when it closes.
    """

    PARTS = "manifest.parts"

    def __init__(self, output: str, storage: Storage):
        self._storage = storage
        self._output = output
        self._uri = join_uri(output, MANIFEST)
        self._local = is_local(output)
        self._run = f"{time.time_ns():020d}"
        self._seq = 0

    def _part_uris(self) -> list[str]:
        return sorted(self._storage.list(join_uri(self._output, self.PARTS + "/")))

    def _lines(self) -> Iterator[str]:
        """The manifest's rows, then any parts' (locally read line by line)."""
        if self._local:
            if os.path.exists(self._uri):
                with open(self._uri, encoding="utf-8", errors="replace") as f:
                    yield from f
            return
        sources = [self._uri] if self._storage.exists(self._uri) else []
        for uri in sources + self._part_uris():
            yield from self._storage.read(uri).decode().splitlines(keepends=True)

    def finished_inputs(self, *, retry_failed: bool = False) -> set[bytes]:
        """Digests (``shared.keys.digest``) of the inputs whose LAST row finishes them
        (``shared.keys.is_finished``)."""
        latest: dict[bytes, bool] = {}
        for line in self._lines():
            try:
                row = json.loads(line)
                outcome = Status(row["status"])
            except (ValueError, KeyError, TypeError):
                continue  # a row cut short by a crash
            latest[digest(row["input"])] = is_finished(outcome, retry_failed=retry_failed)
        return {k for k, finished in latest.items() if finished}

    def append(self, records: list[ResultRecord]) -> None:
        text = "".join(r.model_dump_json() + "\n" for r in records)
        if not text:
            return
        if self._local:
            append_whole(Path(self._uri), text.encode())  # whole rows or none; a torn last row is cut first
            return
        self._seq += 1
        part = join_uri(self._output, f"{self.PARTS}/{self._run}-{self._seq:08d}.jsonl")
        self._storage.write(part, text.encode(), "application/x-ndjson")

    def close(self) -> None:
        if self._local:
            return
        parts = self._part_uris()
        if not parts:
            return
        self._storage.write(self._uri, "".join(self._lines()).encode(), "application/x-ndjson")
        for part in parts:
            self._storage.delete(part)


def run(
    input_spec: str,
    output: str,
    settings: Settings,
    storage: Storage,
    *,
    limit: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    retry_failed: bool = False,
    page_size: int = 1000,
    checked: Checked | None = None,
) -> RunSummary:
    started = time.perf_counter()
    summary = RunSummary()
    # 1. INPUT, OUTPUT, roots, the whole listing and the weights, in that order (``veil run``
    #    has run them already, before importing this module: ``checked``)
    checked = checked or check_run(input_spec, output, settings, storage, overwrite=overwrite, page_size=page_size)
    listing, spec = checked.listing, checked.spec
    # 2. Hold OUTPUT's lock (one run per OUTPUT) for the rest of the run
    with output_lock(output, storage):
        return _run_locked(listing, spec, settings, storage, summary, started, limit, progress, retry_failed)


def keys_to_do(
    listing: Listing, spec: JobSpec, finished: set[bytes], summary: RunSummary, limit: int | None
) -> Iterator[ImageTask | ResultRecord]:
    """INPUT page by page: each key's task, or its row when the task builder refuses it (``unsafe_key``,
    ``name_too_long``); finished keys counted skipped; at most ``limit`` keys."""
    taken = 0
    for page in planned_pages(listing, spec):
        summary.repeats += page.repeats
        keys: list[tuple[str, ImageTask | ResultRecord]] = [
            (item.uri, refused_record(item.uri, exc, spec.job_id)) for item, exc in page.refused
        ]
        keys += [(task.input_uri, task) for _, task in page.tasks]
        for uri, key in keys:
            if limit and taken >= limit:
                summary.limited = limit  # there is at least this one more input
                return
            taken += 1
            if digest(uri) in finished:
                summary.skipped += 1
            else:
                yield key


def _run_locked(
    listing: Listing,
    spec: JobSpec,
    settings: Settings,
    storage: Storage,
    summary: RunSummary,
    started: float,
    limit: int | None,
    progress: bool,
    retry_failed: bool,
) -> RunSummary:
    # 3. The keys to do, streamed: finished ones skipped (unless overwriting: new rows then win)
    manifest = Manifest(spec.output, storage)
    finished = set() if spec.overwrite else manifest.finished_inputs(retry_failed=retry_failed)
    keys = keys_to_do(listing, spec, finished, summary, limit)
    first = next(keys, None)
    if first is None:
        manifest.close()
        summary.seconds = time.perf_counter() - started
        return summary
    # 4. Load the models once
    device = resolve_device(settings.device)
    classical = is_classical(settings.method)  # finished by the analysis thread: no generator
    cpu = CpuModels.load(settings, device, attributes=not classical)
    gpu = None if classical else GpuModels.load(settings, device)
    # 5. Analyse in a background thread while the main thread generates full batches
    bar = tqdm(unit="img", desc="veil run", disable=not progress, dynamic_ncols=True)

    def finish(records: list[ResultRecord]) -> None:
        manifest.append(records)
        stop_if_disk_full(records)
        for record in records:
            summary.count(record)
        bar.update(len(records))
        bar.set_postfix(dict(summary.counts))

    def generate(batch: list[tuple[PromptTask, dict[str, float]]]) -> list[ResultRecord]:
        # a batch on a CPU takes minutes: the bar says what it is waiting for, not just 0/N
        assert gpu is not None  # only prompts, which need the generator, reach a batch
        bar.set_description(f"veil run: generating {len(batch)} ({settings.steps} steps)")
        records = _generate_and_store(batch, gpu, storage, summary)
        bar.set_description("veil run")
        return records

    batch: list[tuple[PromptTask, dict[str, float]]] = []
    source = spec.source
    root = source if is_local(source) and os.path.isdir(source) else None  # symlinks stay in it
    tasks = itertools.chain([first], keys)
    for prompt, timings, ended in _analysed(tasks, cpu, storage, summary, 2 * settings.batch_size, root):
        if ended is not None:
            finish([ended])
            continue
        assert prompt is not None and gpu is not None  # _analysed yields a prompt or a record, never neither
        batch.append((prompt, timings))
        if len(batch) == settings.batch_size:
            finish(generate(batch))
            batch = []
    if batch and gpu is not None:
        finish(generate(batch))
    bar.close()
    manifest.close()
    summary.seconds = time.perf_counter() - started
    return summary


_DONE = object()


def _analysed(
    tasks: Iterator[ImageTask | ResultRecord],
    cpu: CpuModels,
    storage: Storage,
    summary: RunSummary,
    depth: int,
    root: str | None,
) -> Iterator[tuple[PromptTask | None, dict[str, float], ResultRecord | None]]:
    """Reads and analyses the inputs in a background thread, at most ``depth`` ahead of the
    generator; yields (prompt, timings, None) or (None, timings, the key's record: failed,
    no_face, or done by a classical method; a refused key's row as given) in input order. The
    listing runs in that thread too: its failure is raised here, after the keys before it."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            for task in tasks:
                if stop.is_set():
                    return
                if isinstance(task, ResultRecord):
                    out.put((None, {}, task))
                    continue
                timings: dict[str, float] = {}
                try:
                    max_bytes = cpu.settings.max_input_bytes
                    data = call_with_retries(
                        partial(read_input, storage, task.input_uri, max_bytes=max_bytes, root=root)
                    )
                    if is_classical(task.method):  # finished here: the image is written
                        work = partial(anonymize_classical, task, data, cpu, storage, timings)
                        out.put((None, timings, call_with_retries(work)))
                    else:
                        out.put((analyze(task, data, cpu, timings), timings, None))
                except Exception as exc:  # noqa: BLE001 - every failure is recorded, none stops the run
                    out.put((None, timings, error_record(task, exc, cpu.model_sha256, timings)))
                for k, v in timings.items():
                    summary.stage_seconds[k] += v
        except BaseException as exc:  # noqa: BLE001 - the listing's: raised in the main thread
            failed.append(exc)
        finally:
            out.put(_DONE)

    worker = threading.Thread(target=produce, name="veil-analyse", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not _DONE:
            yield item
        if failed:
            raise failed[0]
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get(timeout=0.1)
            except queue.Empty:
                pass


def _generate_and_store(
    batch: list[tuple[PromptTask, dict[str, float]]], gpu: GpuModels, storage: Storage, summary: RunSummary
) -> list[ResultRecord]:
    """The GPU stage's ``finish_batch``; a transient failure left after its retries is a failed row
    (run the same command again to retry it)."""
    timings = [t for _, t in batch]
    finished = finish_batch([p for p, _ in batch], gpu, storage, timings, retry_stores=True)
    summary.stage_seconds["generate"] += sum(t.get("generate", 0.0) for t in timings)
    return [_record_of(k, t) for k, t in zip(finished, timings, strict=True)]


def _record_of(key: Finished, timings: dict[str, float]) -> ResultRecord:
    if key.record is not None:
        return key.record
    assert key.transient is not None  # finish_batch gives one or the other
    return error_record(key.task, key.transient, timings_s=timings)


__all__ = ["run", "RunSummary", "Manifest"]
