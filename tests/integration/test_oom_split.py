"""Out-of-memory handling of the GPU stage, on the CPU with the tiny RANDOM models.

A real OOM needs a real GPU, so the device limit is played by a generator that raises torch's
own OutOfMemoryError above a batch size; everything else is the real generation path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.errors import DeviceOutOfMemoryError
from shared.messages import FaceAnalysis, PromptTask
from shared.prompts import CELEBA_LABELS
from shared.settings import SamplerName
from workers.gpu.generation import GenerationConfig, PortraitGenerator
from workers.gpu.gpumodels import GpuModels
from workers.gpu.loading import load_sd_components
from workers.gpu.stage import generate_batch


class LimitedDevice:
    """Wraps the real generator; raises OutOfMemoryError above ``fits`` images per call."""

    def __init__(self, generator, fits: int):
        self.generator, self.fits, self.calls = generator, fits, []

    def __call__(self, prompts, negatives, seeds, **kwargs):
        self.calls.append(len(prompts))
        if len(prompts) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated device limit)")
        return self.generator(prompts, negatives, seeds, **kwargs)

    def __getattr__(self, name):  # the rest of the generator (its noise built ahead, its scheme)
        return getattr(self.generator, name)


def tasks(n: int) -> list[PromptTask]:
    analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={k: 0.1 for k in CELEBA_LABELS}, age=30,
                            ethnicity="white", deepface_gender="Man")
    return [PromptTask(job_id="j", input_uri=f"in/{i}.jpg", output_uri=f"out/{i}.jpg", seed=100 + i,
                       prompt=f"closeup portrait photo of a white {20 + i} man, ", negative_prompt="bald, ",
                       analysis=analysis, model_sha256={}) for i in range(n)]


@pytest.fixture(scope="module")
def generator(tiny_models):
    c = load_sd_components(tiny_models, torch.device("cpu"), torch.float32)
    return PortraitGenerator(c.unet, c.vae, c.text_encoder, c.tokenizer, c.scheduler_config,
                             GenerationConfig(sampler=SamplerName.FAST, steps=2), torch.device("cpu"), torch.float32)


def test_oom_splits_the_batch_and_loses_no_key(generator):
    reference = generate_batch(tasks(5), GpuModels(generator))
    device = LimitedDevice(generator, fits=2)
    gpu = GpuModels(device)
    images = generate_batch(tasks(5), gpu)
    assert len(images) == 5 and gpu.max_batch == 2
    assert max(device.calls[1:]) <= 2  # after the first OOM every call fits
    for a, b in zip(reference, images):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    device.calls.clear()
    generate_batch(tasks(4), gpu)
    assert device.calls == [2, 2]  # the limit is remembered: no second OOM


def test_single_image_that_does_not_fit_is_transient(generator):
    with pytest.raises(DeviceOutOfMemoryError):
        generate_batch(tasks(1), GpuModels(LimitedDevice(generator, fits=0)))


def test_largest_batch_that_fits_is_measured_at_start(generator):
    from workers.gpu.gpumodels import largest_batch_that_fits

    device = LimitedDevice(generator, fits=3)
    assert largest_batch_that_fits(GpuModels(device), 8) == 2  # 8 -> 4 -> 2
    assert device.calls == [8, 4, 2]
    with pytest.raises(DeviceOutOfMemoryError):
        largest_batch_that_fits(GpuModels(LimitedDevice(generator, fits=0)), 2)


class FlakyStorage:
    """Local files; the first ``fails`` writes raise the transient StorageError an S3 5xx raises."""

    def __init__(self, fails: int):
        from shared.storage import LocalBackend

        self.local, self.fails = LocalBackend(), fails

    def write(self, uri, data, content_type=None):
        from shared.errors import StorageError

        if self.fails > 0:
            self.fails -= 1
            raise StorageError("S3 503 (simulated)")
        self.local.write(uri, data, content_type)


def test_finish_batch_hands_back_or_retries_transient_failures(generator, tmp_path):
    from shared.errors import TransientError
    from workers.gpu.stage import finish_batch

    batch = [t.model_copy(update={"output_uri": str(tmp_path / f"{i}.png")}) for i, t in enumerate(tasks(2))]
    gpu = GpuModels(generator, {"unet": "abc"})
    # The GPU task's way: a transient upload failure comes back for the caller to re-send
    handed = finish_batch(batch, gpu, FlakyStorage(fails=1))
    assert [k.record is None for k in handed].count(True) == 1
    assert all(isinstance(k.transient, TransientError) for k in handed if k.record is None)
    assert all(k.record.status.value == "done" and k.record.model_sha256 == {"unet": "abc"} for k in handed if k.record)
    assert all(k.record.sampler_noise is None for k in handed if k.record)  # the fast sampler has no Brownian noise
    # veil run's way: retried here per RETRY_POLICY, then done, with the generation time per key
    timings = [{"detect": 0.1}, {"detect": 0.2}]
    retried = finish_batch(batch, gpu, FlakyStorage(fails=1), timings, retry_stores=True)
    assert [k.record.status.value for k in retried] == ["done", "done"] and all((tmp_path / f"{i}.png").is_file()
                                                                                 for i in range(2))
    assert all(t["generate"] > 0 for t in timings)
    # Out of memory at one image: the whole batch is a transient failure, no record
    oom = finish_batch(batch, GpuModels(LimitedDevice(generator, fits=0)), FlakyStorage(fails=0))
    assert all(k.record is None and k.transient.reason == "out_of_memory" for k in oom)
