"""Per-key seeds, failure records and sidecars: pure functions, no services."""

from __future__ import annotations

import pytest

from shared.errors import ImageDecodeError, NoFaceError, StorageError
from shared.keys import seed_for
from shared.messages import FaceAnalysis, ImageTask, PromptTask, ResultRecord, Status
from shared.results import error_record, read_sidecar, sidecar_uri
from shared.storage import LocalBackend


def test_seed_for_is_pinned_and_depends_on_seed_and_key_only():
    # known answers: a change to the derivation would change every image of every rerun
    assert seed_for(0, "a/b.jpg") == 2013051599
    assert seed_for(1, "a/b.jpg") == 1988161782
    assert seed_for(0, "a/b.jpg") == seed_for(0, "a/b.jpg")
    assert seed_for(0, "a/c.jpg") != seed_for(0, "a/b.jpg")
    assert all(0 <= seed_for(s, f"k{s}") < 2**31 for s in range(200))


def _image_task() -> ImageTask:
    return ImageTask(job_id="j1", input_uri="in/x.jpg", output_uri="out/x.jpg", seed=7)


def _prompt_task() -> PromptTask:
    analysis = FaceAnalysis(face_box=[1, 2, 3, 4, 0.9], celeba_scores={"Smiling": 0.8}, age=31, ethnicity="asian",
                            deepface_gender="Woman")
    return PromptTask(job_id="j1", input_uri="in/x.jpg", output_uri="out/x.jpg", seed=7, prompt="p", negative_prompt="n",
                      analysis=analysis, model_sha256={"facer": "ab" * 32})


def test_error_record_status_and_reason():
    no_face = error_record(_image_task(), NoFaceError("no face found"))
    assert (no_face.status, no_face.reason, no_face.output) == (Status.NO_FACE, "no_face: no face found", None)
    bad = error_record(_image_task(), ImageDecodeError("not an image\nTraceback..."))
    assert (bad.status, bad.reason) == (Status.FAILED, "undecodable: not an image")  # first line only
    storage = error_record(_image_task(), StorageError(""))
    assert storage.reason == "storage"
    unknown = error_record(_image_task(), KeyError("boom"))
    assert unknown.status is Status.FAILED and unknown.reason.startswith("KeyError")


def test_error_record_of_a_prompt_task_keeps_what_was_learnt():
    record = error_record(_prompt_task(), StorageError("S3 down"))
    assert record.age == 31 and record.ethnicity == "asian" and record.prompt == "p"
    assert record.model_sha256 == {"facer": "ab" * 32} and record.seed == 7 and record.job_id == "j1"


def test_read_sidecar_absent_damaged_and_valid(tmp_path):
    backend = LocalBackend()
    out = str(tmp_path / "out" / "x.jpg")
    assert read_sidecar(backend, out) is None
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.jpg.json").write_text("{not json")
    assert read_sidecar(backend, out) is None  # damaged counts as absent: the key is done again
    record = ResultRecord(input="in/x.jpg", output=out, status=Status.DONE, seed=3)
    backend.write(sidecar_uri(out), record.model_dump_json().encode())
    assert read_sidecar(backend, out) == record


def test_settings_from_env_parses_and_rejects_unknown_names():
    from shared.settings import SamplerName, Settings

    s = Settings.from_env({"VEIL_STEPS": "20", "VEIL_SCHEDULER": "fast", "OTHER": "x"}, seed=5)
    assert (s.steps, s.sampler, s.seed) == (20, SamplerName.FAST, 5)
    with pytest.raises(ValueError, match="VEIL_STEPZ"):
        Settings.from_env({"VEIL_STEPZ": "20"})
    with pytest.raises(ValueError, match="steps"):
        Settings.from_env({"VEIL_STEPS": "0"})
    secret = Settings.from_env({"VEIL_S3_SECRET_ACCESS_KEY": "hunter2"})
    assert "hunter2" not in repr(secret) and secret.s3_secret_access_key.get_secret_value() == "hunter2"
    assert Settings.from_env({}).s3_secret_access_key is None  # no default for secrets


def test_old_scheduler_variable_still_works_with_a_warning(caplog):
    from shared.settings import SamplerName, Settings

    with caplog.at_level("WARNING"):
        s = Settings.from_env({"VEIL_SCHEDULER": "fast"})
    assert s.sampler is SamplerName.FAST and "VEIL_SAMPLER" in caplog.text
    assert "scheduler" not in s.model_dump()
    assert Settings.from_env({"VEIL_SCHEDULER": "fast", "VEIL_SAMPLER": "fast"}).sampler is SamplerName.FAST
    with pytest.raises(ValueError, match="VEIL_SAMPLER"):
        Settings.from_env({"VEIL_SCHEDULER": "fast", "VEIL_SAMPLER": "faithful"})


def test_version_1_records_and_messages_are_read_under_their_old_names():
    old = ('{"schema_version": 1, "input": "a.jpg", "output": null, "status": "done", '
           '"models": {"facer": "ab"}, "attributes": {"Smiling": 0.9}}')
    record = ResultRecord.model_validate_json(old)
    assert record.model_sha256 == {"facer": "ab"} and record.celeba_scores == {"Smiling": 0.9}
    dumped = record.model_dump()
    assert dumped["schema_version"] == 3 and "models" not in dumped and "attributes" not in dumped
    task = _prompt_task().model_dump(mode="json")
    task.update(schema_version=1, models=task.pop("model_sha256"))
    task["analysis"]["celeba"] = task["analysis"].pop("celeba_scores")
    assert PromptTask.model_validate(task) == _prompt_task()
    with pytest.raises(ValueError):
        ImageTask.model_validate({**_image_task().model_dump(), "schema_version": 4})  # unknown: refused


def test_a_new_broker_url_is_used_by_send_task_after_configure():
    """configure() with another broker forgets connections cached for the first (no broker is
    needed to see it: the send goes to the port of the URL given last)."""
    import socket

    from shared.settings import Settings
    from workers.celery_app import configure

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    for port in ports:  # nothing listens on either: each send must fail naming its own port
        app = configure(Settings.from_env({}, broker_url=f"redis://127.0.0.1:{port}/0"))
        with pytest.raises(Exception, match=str(port)):
            app.send_task("veil.nothing", args=[], queue="nowhere", retry=False)
