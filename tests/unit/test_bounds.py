"""Issue 23: bounds judged before work (pure logic). Real workers: test_hostile_messages.py;
peak RSS of the decode bombs: test_decode_budget.py."""

from __future__ import annotations

import base64

import pytest

from shared.errors import ImageTooLargeError, MessageBoundsError
from shared.imageio import decode_scaled
from shared.messages import FaceAnalysis, FacePrompt, PromptTask
from workers.admission import _bounded

#: A lossless WebP of 10900x10900 grey pixels: 38 bytes (Pillow, lossless=True, method=0).
WEBP_BOMB = base64.b64decode("UklGRh4AAABXRUJQVlA4TBEAAAAvk+qkCgdQwAIWsP+BiOh/AAA=")


def test_a_tiny_file_is_judged_by_the_pixels_it_would_decode():
    with pytest.raises(ImageTooLargeError, match="VEIL_MAX_DECODED_PIXELS"):
        decode_scaled(WEBP_BOMB, max_pixels=120_000_000, max_decoded=50_000_000)
    with pytest.raises(ImageTooLargeError, match="VEIL_MAX_DECODED_PIXELS"):  # reduce() comes after a full load
        decode_scaled(WEBP_BOMB, max_pixels=120_000_000, max_side=2048, max_decoded=50_000_000)


def _task(prompt: str, faces: int) -> PromptTask:
    analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={}, age=1, ethnicity="x", deepface_gender="x")
    face = FacePrompt(analysis=analysis, prompt=prompt, negative_prompt="n", seed=1)
    return PromptTask(job_id="j", input_uri="/in/a.jpg", output_uri="/out/a.jpg", seed=1, prompt=prompt,
                      negative_prompt="n", analysis=analysis, model_sha256={}, faces=[face] * faces)


def test_prompts_are_cut_before_tokenising_and_faces_bounded():
    task = _bounded(_task("x" * 50_000, 3), max_faces=10, max_chars=2000)
    assert len(task.prompt) == 2000 and all(len(f.prompt) == 2000 for f in task.faces)
    short = _task("a portrait", 1)
    assert _bounded(short, max_faces=10, max_chars=2000) is short
    with pytest.raises(MessageBoundsError, match="VEIL_MAX_FACES"):
        _bounded(_task("a", 11), max_faces=10, max_chars=2000)
