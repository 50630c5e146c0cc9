"""The GPU stage's batching helpers (``workers.gpu.batching``), without a model: the next chunk
is prepared while a chunk runs, an OOM split falls back to preparing in place, uploads are
bounded to one chunk waiting, and batch sizes up to 128 reach the Celery task (issue 19 item 3)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from shared.errors import DeviceOutOfMemoryError
from shared.messages import FaceAnalysis, PromptTask
from shared.settings import Settings
from workers.gpu.batching import Uploads, generate_in_chunks, largest_chunk


class Limit:
    def __init__(self, max_batch):
        self.max_batch = max_batch


def test_the_next_chunk_is_prepared_while_a_chunk_runs():
    prepared: dict[tuple[int, int], threading.Event] = {}
    used = []

    def prepare(start, stop):
        prepared.setdefault((start, stop), threading.Event()).set()
        return ("noise", start, stop)

    def run(start, stop, noise):
        if stop < 7:  # the next chunk's preparation runs during this one (or this waits forever)
            assert prepared.setdefault((stop, min(7, 2 * stop - start)), threading.Event()).wait(60)
        used.append(noise)
        return list(range(start, stop))

    assert generate_in_chunks(7, run, Limit(3), prepare=prepare) == list(range(7))
    assert used == [None, ("noise", 3, 6), ("noise", 6, 7)]


def test_an_out_of_memory_split_prepares_in_place_and_keeps_order():
    used = []

    def run(start, stop, noise):
        if stop - start > 2:
            raise torch.OutOfMemoryError("simulated")
        used.append((start, stop, noise))
        return list(range(start, stop))

    limit = Limit(4)
    assert generate_in_chunks(6, run, limit, prepare=lambda a, b: (a, b)) == list(range(6))
    assert limit.max_batch == 2
    # what was prepared for 4:6 before the split is not used for 0:2 (drawn in place); from then
    # on each chunk gets what was prepared while the one before it ran
    assert used == [(0, 2, None), (2, 4, (2, 4)), (4, 6, (4, 6))]
    with pytest.raises(DeviceOutOfMemoryError):
        largest_chunk(0, 1, lambda a, b: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), Limit(1))


class SlowStorage:
    """Records each write's start and end; the first chunk's writes are slow."""

    def __init__(self):
        self.events, self.lock = [], threading.Lock()

    def write(self, uri, data, content_type=None):
        with self.lock:
            self.events.append(("start", uri))
        if "/out/0/" in uri:
            time.sleep(0.2)
        with self.lock:
            self.events.append(("end", uri))


def test_at_most_one_chunk_of_uploads_waits(tmp_path):
    analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={}, age=30, ethnicity="white",
                            deepface_gender="Man")  # fmt: skip
    tasks = [PromptTask(job_id="j", input_uri=f"in/{i}.jpg", output_uri=f"{tmp_path}/out/{i // 3}/{i}.png", seed=i,
                        prompt="p", negative_prompt="n", analysis=analysis, model_sha256={})
             for i in range(6)]  # fmt: skip
    storage = SlowStorage()
    uploads = Uploads(tasks, storage, [{} for _ in tasks])
    pixels = [np.zeros((8, 8, 3), np.uint8)] * 3
    uploads.add(0, pixels)
    uploads.add(3, pixels)  # waits for the first chunk's uploads before it queues its own
    assert uploads.errors() == [None] * 6
    first_start = min(k for k, (what, uri) in enumerate(storage.events) if what == "start" and "/out/1/" in uri)
    last_end = max(k for k, (what, uri) in enumerate(storage.events) if what == "end" and "/out/0/" in uri)
    assert last_end < first_start


def test_batches_of_128_reach_the_task():
    from workers.gpu.tasks import configure_batching, generate_portraits

    before = generate_portraits.flush_every, generate_portraits.flush_interval
    try:
        configure_batching(Settings.from_env({"VEIL_BATCH_SIZE": "128"}))
        assert generate_portraits.flush_every == 128
    finally:
        generate_portraits.flush_every, generate_portraits.flush_interval = before
