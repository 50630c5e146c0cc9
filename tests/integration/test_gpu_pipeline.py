"""The GPU stage as a pipeline (issue 19 item 3), on the CPU with the tiny RANDOM models at 64 px:
a batch above ``max_batch`` runs in chunks; while chunk k generates, chunk k+1's sampler noise is
built on a thread and chunk k-1's images are uploaded. Shown here:

- the noise built ahead is used (chunks after the first) and gives the pixels of noise built in
  place, bit for bit;
- uploads run while the next chunk generates (the next chunk waits for a written image of the
  previous one: the sequential path would never get there) and write the bytes the sequential
  path (generate every chunk, then encode) writes;
- S3 cut (moto behind a ``TcpProxy``) while the third chunk generates, after the second chunk's
  images are written: the written keys are done, the others hand a transient failure back, each
  key exactly one outcome; after S3 is back the handed-back keys finish.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from shared.errors import TransientError
from shared.imageio import encode_image
from shared.messages import FaceAnalysis, PromptTask
from shared.prompts import CELEBA_LABELS
from shared.settings import SamplerName, SamplerNoise, Settings
from shared.storage import open_storage
from tests.faults import object_keys, s3_behind_proxy
from tests.services import wait_for
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.gpumodels import GpuModels
from workers.gpu.loading import load_sd_components
from workers.gpu.stage import finish_batch, generate_batch

BUCKET = "pipeline"
CHUNK = 2
WAIT_S = 120  # a bound for a loaded 2-core VM, never reached when the pipeline works


@pytest.fixture(scope="module")
def generator(tiny_models):
    c = load_sd_components(tiny_models, torch.device("cpu"), torch.float32)
    config = GenerationConfig(sampler=SamplerName.FAITHFUL, sampler_noise=SamplerNoise.EXACT, steps=2, image_size=64)
    return PortraitGenerator(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config, config,
                             torch.device("cpu"), torch.float32)  # fmt: skip


def tasks(n: int, out: str) -> list[PromptTask]:
    analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={k: 0.1 for k in CELEBA_LABELS}, age=30,
                            ethnicity="white", deepface_gender="Man")  # fmt: skip
    return [PromptTask(job_id="j", input_uri=f"in/{i}.jpg", output_uri=f"{out}/{i}.png", seed=100 + i,
                       prompt=f"closeup portrait photo of a white {20 + i} man, ", negative_prompt="bald, ",
                       analysis=analysis, model_sha256={}) for i in range(n)]  # fmt: skip


class Watched:
    """The real generator, with ``before(k)`` called as its k-th call (chunk k) starts, and
    whether each call used noise built ahead."""

    def __init__(self, generator, before=None):
        self.generator, self.before, self.calls, self.ahead = generator, before, 0, []

    def __call__(self, *args, **kwargs):
        if self.before is not None:
            self.before(self.calls)
        self.calls += 1
        images = self.generator(*args, **kwargs)
        self.ahead.append(self.generator.sampler.scheduler.noise_sampler.prepared_ahead)
        return images

    def __getattr__(self, name):
        return getattr(self.generator, name)


def sequential(generator, batch: list[PromptTask]) -> list[np.ndarray]:
    """The chunks generated one after the other, each drawing its own noise in place."""
    images = []
    for a in range(0, len(batch), CHUNK):
        part = batch[a : a + CHUNK]
        images += generator([t.prompt for t in part], [t.negative_prompt for t in part], [t.seed for t in part])
    return images


def test_noise_built_ahead_is_used_and_changes_no_pixel(generator, tmp_path):
    batch = tasks(5, str(tmp_path))
    watched = Watched(generator)
    images = generate_batch(batch, GpuModels(watched, max_batch=CHUNK))
    assert watched.ahead == [False, True, True]  # chunks 2 and 3 took the noise built while 1 and 2 ran
    reference = sequential(generator, batch)
    assert all(np.array_equal(a, b) for a, b in zip(images, reference, strict=True))


class WrittenLocally:
    """Local files (the real backend), with an event set once ``uri`` is written."""

    def __init__(self, storage, uri: str):
        self.storage, self.uri, self.written = storage, uri, threading.Event()

    def write(self, uri, data, content_type=None):
        self.storage.write(uri, data, content_type)
        if uri == self.uri:
            self.written.set()


def test_uploads_run_while_the_next_chunk_generates_and_write_the_same_bytes(generator, tmp_path):
    batch = tasks(5, str(tmp_path))
    storage = WrittenLocally(open_storage(Settings.from_env({})), batch[0].output_uri)
    seen: dict[int, bool] = {}

    def before(k: int) -> None:
        if k == 1:  # chunk 2 starts only once an image of chunk 1 is written (or WAIT_S passes)
            seen[k] = storage.written.wait(WAIT_S)

    done = finish_batch(batch, GpuModels(Watched(generator, before), max_batch=CHUNK), storage)
    assert seen == {1: True}
    assert [f.record.status.value for f in done if f.record] == ["done"] * 5
    for task, pixels in zip(batch, sequential(generator, batch), strict=True):
        with open(task.output_uri, "rb") as f:
            assert f.read() == encode_image(pixels, task.output_uri)


def test_s3_cut_mid_overlap_ends_every_key_once(generator):
    with s3_behind_proxy(BUCKET) as (proxy, client, _):
        settings = Settings.from_env({}, s3_endpoint_url=proxy.url, s3_access_key_id="testing",
                                     s3_secret_access_key="testing")  # fmt: skip
        storage = open_storage(settings)
        batch = tasks(6, f"s3://{BUCKET}/out")

        def before(k: int) -> None:
            if k == 2:  # chunk 3 starts: chunk 2's images are in S3, then S3 goes away
                wanted = ["out/0.png", "out/1.png", "out/2.png", "out/3.png"]
                wait_for(lambda: object_keys(client, BUCKET, "out/") == wanted, WAIT_S, "chunk 2's images")
                proxy.cut()

        done = finish_batch(batch, GpuModels(Watched(generator, before), max_batch=CHUNK), storage)
        outcomes = ["done" if f.record else type(f.transient).__name__ for f in done]
        assert [f.record.status.value for f in done[:4] if f.record] == ["done"] * 4, outcomes
        assert all(f.record is None and isinstance(f.transient, TransientError) for f in done[4:]), outcomes
        assert object_keys(client, BUCKET, "out/") == [f"out/{i}.png" for i in range(4)]
        # S3 back: the handed-back keys are sent again (as the GPU task re-sends them) and finish
        proxy.restore()
        again = finish_batch([f.task for f in done[4:]], GpuModels(generator, max_batch=CHUNK), storage)
        assert [f.record.status.value for f in again if f.record] == ["done"] * 2
        assert object_keys(client, BUCKET, "out/") == [f"out/{i}.png" for i in range(6)]
