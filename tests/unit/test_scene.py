"""Scene mode's geometry and bookkeeping (issue 14): squares, feathered pasting, face seeds,
version 3 messages reading older ones, and the guard's tries and fallback."""

from __future__ import annotations

import numpy as np
import pytest

from shared.messages import FaceAnalysis, FacePrompt, PromptTask, ResultRecord
from shared.scene import Region, cut, face_region, face_seed, feather_mask, mask_box, paste, paste_order
from shared.settings import GuardName, Mode
from workers.guard import Guard


def test_face_region_is_a_square_inside_the_image_around_the_face():
    # a face at the right edge: the square is shifted in, never cut, and still holds the face
    r = face_region([900, 100, 990, 220, 0.99], margin=0.35, height=600, width=1000)
    assert r.side == round(120 * 1.7) and r.x + r.side <= 1000 and r.y >= 0
    assert r.x <= 900 and r.x + r.side >= 990 and r.y <= 100 and r.y + r.side >= 220
    # a face bigger than the image allows: the square is the image's shorter side
    assert face_region([0, 0, 300, 400], 0.5, height=400, width=300) == Region(0, 50, 300)  # centred


def test_feather_mask_is_zero_on_the_border_and_one_in_the_middle():
    m = feather_mask(100, 0.15)
    assert m.shape == (100, 100) and m.dtype == np.float32
    assert m[0].max() == 0 and m[:, 0].max() == 0 and m[-1].max() == 0 and m[:, -1].max() == 0
    assert m[15:85, 15:85].min() == 1.0 and np.all(np.diff(m[50, :50]) >= 0)


def test_paste_changes_only_pixels_inside_the_region_and_not_its_border():
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    before = canvas.copy()
    region = Region(30, 20, 64)
    paste(canvas, np.full((256, 256, 3), 7, np.uint8), region, feather=0.2)  # resized to the region
    changed = np.any(canvas != before, axis=2)
    inside = np.zeros_like(changed)
    inside[21:83, 31:93] = True  # the region less its one-pixel border
    assert changed[~inside].sum() == 0
    assert np.all(canvas[52, 62] == 7)  # the middle is the new pixels
    assert changed[inside].mean() > 0.9


def test_cut_gives_the_model_size_and_paste_order_puts_big_faces_on_top():
    rgb = np.zeros((300, 300, 3), np.uint8)
    assert cut(rgb, Region(10, 10, 100), 64).shape == (64, 64, 3)
    assert paste_order([Region(0, 0, 50), Region(0, 0, 20), Region(0, 0, 90)]) == [1, 0, 2]


def test_mask_box_blacks_out_the_face_box_only():
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    before = canvas.copy()
    mask_box(canvas, [10.2, 5, 20, 15.5, 0.9])
    assert canvas[5:16, 10:20].max() == 0  # black, as classical mask
    outside = np.ones((50, 50), bool)
    outside[5:16, 10:20] = False
    assert np.array_equal(canvas[outside], before[outside])


def test_face_seeds_depend_on_the_image_seed_the_index_and_the_attempt():
    assert face_seed(7, 0) == face_seed(7, 0)
    assert len({face_seed(7, i) for i in range(50)}) == 50
    assert face_seed(8, 0) != face_seed(7, 0)
    assert face_seed(7, 3, attempt=1) == (face_seed(7, 3) + 1) & 0x7FFFFFFF


ANALYSIS = dict(face_box=[1, 2, 3, 4, 0.9], celeba_scores={"Smiling": 0.8}, age=31, ethnicity="asian",
                deepface_gender="Woman")


def test_version_2_prompt_messages_are_read_as_portraits():
    v2 = dict(schema_version=2, job_id="j", input_uri="in/a.jpg", output_uri="out/a.jpg", seed=1, prompt="p",
              negative_prompt="n", analysis=ANALYSIS, model_sha256={})
    task = PromptTask.model_validate(v2)
    assert task.schema_version == 3 and task.mode is Mode.PORTRAIT and task.guard is GuardName.OFF
    assert task.faces == []
    record = ResultRecord.model_validate(dict(schema_version=2, input="a", output=None, status="failed"))
    assert record.mode is Mode.PORTRAIT and record.faces is None


def test_scene_messages_round_trip_with_every_face():
    face = FacePrompt(analysis=FaceAnalysis(**ANALYSIS), prompt="p", negative_prompt="n", seed=5)
    task = PromptTask(job_id="j", input_uri="in/a.jpg", output_uri="out/a.jpg", seed=1, prompt="p",
                      negative_prompt="n", analysis=face.analysis, model_sha256={}, mode=Mode.SCENE,
                      guard=GuardName.DLIB, faces=[face, face])
    again = PromptTask.model_validate_json(task.model_dump_json())
    assert again == task and again.faces[1].seed == 5
    with pytest.raises(ValueError):
        PromptTask.model_validate(task.model_dump() | {"mode": "collage"})


def _guard(threshold: float, tries: int) -> Guard:
    """The guard's rule with a stand-in embedder (a face's mean colour): what is tested here is
    the bookkeeping, tries and fallback; the real embedders are issue 13's."""

    def embed(rgb, box):
        x1, y1, x2, y2 = (int(v) for v in box[:4])
        return rgb[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)

    return Guard(GuardName.DLIB, threshold, tries, embed, lambda a, b: float(np.linalg.norm(a - b)))


def test_the_guard_counts_tries_and_reports_the_fallback():
    original = np.full((40, 40, 3), 100, np.uint8)
    box = [10, 10, 30, 30, 1.0]
    check = _guard(threshold=20.0, tries=2).start(original, box)
    assert not check.check(np.full((40, 40, 3), 105, np.uint8))  # 8.7 < 20: still re-identifies
    assert not check.exhausted
    assert not check.check(np.full((40, 40, 3), 110, np.uint8))  # 17.3 < 20
    assert check.exhausted and not check.passed
    check.fallback = "mask"
    result = check.result()
    assert result.tries == 2 and result.fallback == "mask" and not result.passed
    assert result.distances == pytest.approx([5 * 3**0.5, 10 * 3**0.5], abs=1e-3)

    passing = _guard(threshold=20.0, tries=3).start(original, box)
    assert passing.check(np.full((40, 40, 3), 200, np.uint8))  # far away: kept at the first try
    assert passing.result().tries == 1 and passing.result().passed and passing.result().fallback is None


def test_a_guard_on_portraits_is_refused_and_scene_mode_takes_it():
    from shared.settings import Settings

    with pytest.raises(ValueError, match=r"VEIL_GUARD\) needs --mode scene \(VEIL_MODE\)"):
        Settings.from_env({"VEIL_GUARD": "dlib"})
    s = Settings.from_env({"VEIL_GUARD": "dlib", "VEIL_MODE": "scene"})
    assert s.guard is GuardName.DLIB and s.guard_threshold is None and s.guard_tries == 3
