"""An S3 input over VEIL_MAX_INPUT_BYTES is refused from its size (a HEAD), before any byte of
it is downloaded: the bytes coming back through a proxy in front of moto_server show it."""

from __future__ import annotations

import pytest

from shared.errors import InputFileTooLargeError
from shared.inputfiles import read_input
from shared.settings import Settings
from shared.storage import open_storage
from tests.services import moto_s3
from tests.tcpproxy import TcpProxy


def test_big_s3_object_is_refused_before_it_is_read():
    with moto_s3() as endpoint, TcpProxy(int(endpoint.rsplit(":", 1)[1])) as proxy:
        settings = Settings.from_env({}, s3_endpoint_url=proxy.url, s3_access_key_id="k", s3_secret_access_key="s")
        storage = open_storage(settings)
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        storage.write("s3://bkt/in/big.jpg", b"\xff" * 3_000_000)
        storage.write("s3://bkt/in/small.jpg", b"\xff" * 1000)
        before = proxy.bytes_down
        with pytest.raises(InputFileTooLargeError, match="3000000 bytes"):
            read_input(storage, "s3://bkt/in/big.jpg", max_bytes=1_000_000)
        assert proxy.bytes_down - before < 100_000  # a HEAD's headers, not the 3 MB body
        assert read_input(storage, "s3://bkt/in/small.jpg", max_bytes=1_000_000) == b"\xff" * 1000
