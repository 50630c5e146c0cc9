"""Issue 23, exposure: credentials redacted from log lines, ``veil eval``'s identities CSV read
only under ORIGINALS. (-v against a real S3: tests/integration/test_exposure.py.)"""

from __future__ import annotations

import logging

from orchestrator.evaluation.data import gallery_files
from shared.redact import Redactor, redact, secrets_from_env


def test_credentials_are_redacted_whatever_the_line():
    secrets = secrets_from_env({"VEIL_S3_ACCESS_KEY_ID": "AKIAEXAMPLE1", "VEIL_S3_SECRET_ACCESS_KEY": "s3cr3t/key+x"})
    line = ("Sending http request: <AWSPreparedRequest headers={'Authorization': b'AWS4-HMAC-SHA256 "
            "Credential=AKIAOTHER99/20261203/us-east-1/s3/aws4_request, SignedHeaders=host, "
            "Signature=0a1b2c3d'}> secret s3cr3t/key+x id AKIAEXAMPLE1 broker redis://veil:hunter22@redis:6379/0")
    clean = redact(line, secrets)
    for leaked in ("AKIAEXAMPLE1", "s3cr3t/key+x", "AKIAOTHER99", "0a1b2c3d", "hunter22"):
        assert leaked not in clean, clean
    assert "Credential=***" in clean and "redis://veil:***@redis" in clean


def test_the_filter_rewrites_formatted_records():
    record = logging.LogRecord("botocore", logging.DEBUG, __file__, 1, "key %s", ("AKIAEXAMPLE1",), None)
    assert Redactor(["AKIAEXAMPLE1"]).filter(record) and record.getMessage() == "key ***"


def test_the_identities_csv_reads_only_files_under_originals(tmp_path):
    originals = tmp_path / "originals"
    originals.mkdir()
    (originals / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (originals / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    ids = {"a.jpg": "1", "gone.jpg": "2", "/etc/passwd": "3", "../secret.jpg": "4", "link.jpg": "5"}
    files, missing, outside = gallery_files(originals, ids)
    assert files == ["a.jpg"] and missing == ["gone.jpg"]
    assert sorted(outside) == ["../secret.jpg", "/etc/passwd", "link.jpg"]
