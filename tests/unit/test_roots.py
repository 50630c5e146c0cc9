"""Issue 23: allowed roots, a job's own output, envelope parsing and printable keys (pure logic;
the same checks against real workers: tests/integration/test_hostile_messages.py)."""

from __future__ import annotations

import json

import pytest
from kombu.transport.virtual.base import Channel

from shared.errors import BadEnvelopeError, OutsideAllowedRootsError
from shared.messages import JobSpec
from shared.printable import printable
from shared.roots import AllowedRoots, check_job, check_job_input, check_job_roots, under
from shared.settings import Settings
from workers.envelopes import configure, parse


def test_object_roots_are_prefixes_by_segment():
    assert under("s3://b/in", "s3://b/in/x.jpg") and under("s3://b/in/", "s3://b/in/a/x.jpg")
    assert not under("s3://b/in", "s3://b/in2/x.jpg")
    assert not under("s3://b/in", "s3://other/in/x.jpg")
    assert not under("s3://b/in", "/b/in/x.jpg") and not under("/b/in", "s3://b/in/x.jpg")


def test_local_roots_compare_real_paths(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "file.jpg").symlink_to(outside / "secret.jpg")
    assert under(str(root), str(root / "a" / "b.jpg"))
    assert not under(str(root), str(root / "link" / "x.jpg"))  # a folder symlink out of the root
    assert not under(str(root), str(root / "file.jpg"))  # a file symlink out of the root
    assert not under(str(root), str(root / ".." / "outside" / "x.jpg"))
    assert not under(str(root), str(tmp_path / "root2" / "x.jpg"))
    (tmp_path / "alias").symlink_to(root)  # a root named through a symlink is its real folder
    assert under(str(tmp_path / "alias"), str(root / "x.jpg"))


def test_roots_unset_allow_all_and_set_refuse_outside(tmp_path):
    assert AllowedRoots().input_allowed("/etc/passwd") and not AllowedRoots().restricted
    roots = AllowedRoots.of([str(tmp_path / "in"), "s3://b/in/"], [str(tmp_path / "out")])
    roots.check_input(str(tmp_path / "in" / "a.jpg"))
    roots.check_input("s3://b/in/a.jpg")
    for uri in ("/etc/passwd", "s3://other/in/a.jpg", "s3://b/in2/a.jpg"):
        with pytest.raises(OutsideAllowedRootsError):
            roots.check_input(uri)
    with pytest.raises(OutsideAllowedRootsError, match="VEIL_OUTPUT_ROOTS"):
        roots.check_output("s3://other/pwned.png")
    with pytest.raises(OutsideAllowedRootsError):
        check_job_roots(roots, ["s3://b/in/"], "/tmp/elsewhere")
    with pytest.raises(OutsideAllowedRootsError):
        check_job_roots(roots, ["/data/x"], str(tmp_path / "out"))


def test_a_message_must_lie_under_its_own_jobs_output():
    spec = JobSpec(job_id="A", name="A", input="s3://b/in/", source="s3://b/in/", output="s3://b/outA/")
    check_job(spec, "A", "s3://b/outA/x.jpg", required=True)
    with pytest.raises(OutsideAllowedRootsError, match="outside job 'A'"):
        check_job(spec, "A", "s3://b/outB/x.jpg", required=True)
    with pytest.raises(OutsideAllowedRootsError, match="no spec"):
        check_job(None, "nope", "s3://b/outA/x.jpg", required=True)
    check_job(None, "nope", "s3://b/outA/x.jpg", required=False)  # roots unset: a job without a spec passes
    with pytest.raises(OutsideAllowedRootsError, match="input"):
        check_job_input(spec, "A", "s3://b/secret/x.jpg")


def test_roots_settings_are_comma_separated():
    s = Settings.from_env({"VEIL_INPUT_ROOTS": "s3://b/in/, /data/in", "VEIL_OUTPUT_ROOTS": ""})
    assert s.input_roots == ["s3://b/in/", "/data/in"] and s.output_roots == []


class _Codecs(Channel):
    def __init__(self):  # only decode_body and its codecs are used
        pass


def test_envelopes_that_do_not_decode_are_refused_with_a_reason():
    configure(4096, "cpu")
    good = {"body": "e30=", "properties": {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": {}}}
    assert parse(json.dumps(good).encode(), _Codecs())["body"] == "e30="
    cases = {
        b"garbage": "bad_envelope",
        b"\xff\xfe": "bad_envelope",
        b"[1, 2]": "bad_envelope",
        json.dumps({"body": "x", "properties": {}}).encode(): "bad_envelope",
        json.dumps(good | {"body": "!!! not base64"}).encode(): "bad_envelope",
        json.dumps(good | {"body": "A" * 5000}).encode(): "message_too_large",
    }
    for item, reason in cases.items():
        with pytest.raises(BadEnvelopeError) as err:
            parse(item, _Codecs())
        assert err.value.reason == reason, item[:40]


def test_printable_escapes_control_and_format_characters():
    assert printable("in/a.jpg") == "in/a.jpg" and printable("in/é.jpg") == "in/é.jpg"
    assert printable("in/\x1b[2Jx.jpg") == "in/\\x1b[2Jx.jpg"
    assert printable("in/\u202egpj.exe") == "in/\\u202egpj.exe"
    assert printable("a\nb\rc\x07") == "a\\x0ab\\x0dc\\x07"
