"""Storage against a real S3 endpoint (moto_server) and a dead one."""

import pytest

from shared.errors import StorageError
from shared.settings import Settings
from shared.storage import open_storage
from tests.services import free_port, moto_s3


def s3_settings(endpoint: str) -> Settings:
    return Settings.from_env({}, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s")


def test_s3_round_trip_and_listing():
    with moto_s3() as endpoint:
        storage = open_storage(s3_settings(endpoint))
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        storage.write("s3://bkt/in/a/1.jpg", b"one")
        storage.write("s3://bkt/in/2.png", b"two")
        assert storage.read("s3://bkt/in/a/1.jpg") == b"one"
        assert storage.exists("s3://bkt/in/2.png") and not storage.exists("s3://bkt/in/3.png")
        assert sorted(storage.list("s3://bkt/in/")) == ["s3://bkt/in/2.png", "s3://bkt/in/a/1.jpg"]
        with pytest.raises(FileNotFoundError):
            storage.read("s3://bkt/in/missing.jpg")


def test_unreachable_endpoint_is_transient():
    storage = open_storage(s3_settings(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StorageError):
        storage.read("s3://bkt/k.jpg")


def test_local_write_is_atomic_and_lists_recursively(tmp_path):
    storage = open_storage(Settings.from_env({}))
    storage.write(str(tmp_path / "a" / "b.jpg"), b"x")
    assert [p for p in storage.list(str(tmp_path))] == [str(tmp_path / "a" / "b.jpg")]
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_s3_manifest_parts_survive_a_crash_and_fold_on_close():
    from orchestrator.embedded import Manifest
    from shared.keys import digest
    from shared.messages import ResultRecord, Status

    def rec(name, status):
        return ResultRecord(input=f"s3://bkt/in/{name}", output=None, status=status)

    with moto_s3() as endpoint:
        storage = open_storage(s3_settings(endpoint))
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        crashed = Manifest("s3://bkt/out/", storage)
        crashed.append([rec("a.jpg", Status.DONE), rec("b.jpg", Status.FAILED)])
        crashed.append([rec("c.jpg", Status.NO_FACE)])  # ...and the process dies: no close()
        again = Manifest("s3://bkt/out/", storage)
        assert again.finished_inputs() == {digest(f"s3://bkt/in/{n}.jpg") for n in "abc"}  # any outcome
        assert again.finished_inputs(retry_failed=True) == {digest("s3://bkt/in/a.jpg"), digest("s3://bkt/in/c.jpg")}
        again.append([rec("b.jpg", Status.DONE)])
        again.close()
        assert list(storage.list("s3://bkt/out/")) == ["s3://bkt/out/manifest.jsonl"]
        lines = storage.read("s3://bkt/out/manifest.jsonl").decode().splitlines()
        assert [ResultRecord.model_validate_json(x).input.rsplit("/", 1)[-1] for x in lines] == \
            ["a.jpg", "b.jpg", "c.jpg", "b.jpg"]
        finished = Manifest("s3://bkt/out/", storage).finished_inputs(retry_failed=True)
        assert finished == {digest(f"s3://bkt/in/{n}.jpg") for n in "abc"}  # b's last row is done
