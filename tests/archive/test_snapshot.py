"""rltui.archive.snapshot: a file is uploaded as it was hashed, or not at all (no S3 needed)."""

from __future__ import annotations

import hashlib
import os

from rltui.archive.manifest import stat_local
from rltui.archive.snapshot import open_as_hashed


def _hashed(tmp_path, name: str, data: bytes):
    (tmp_path / name).write_bytes(data)
    return stat_local(tmp_path, name), hashlib.sha256(data).hexdigest()


def test_a_small_file_is_sent_from_the_bytes_read_now_when_they_are_the_hashed_ones(tmp_path):
    f, sha = _hashed(tmp_path, "status.json", b'{"step": 1}')
    body = open_as_hashed(f, sha, small=1024)
    assert body is not None and body.read() == b'{"step": 1}'


def test_a_file_replaced_or_rewritten_since_its_hash_is_not_sent(tmp_path):
    f, sha = _hashed(tmp_path, "status.json", b'{"step": 1, "padding": "xxxxxxxx"}')
    fresh = tmp_path / "status.json.tmp"
    fresh.write_bytes(b'{"step": 2}')
    os.replace(fresh, tmp_path / "status.json")  # an atomic write: a new inode, fewer bytes
    assert open_as_hashed(f, sha, small=1024) is None
    assert open_as_hashed(f, sha, small=4) is None  # large or small, the inode tells

    g, sha_g = _hashed(tmp_path, "log.txt", b"aaaa")
    (tmp_path / "log.txt").write_bytes(b"bbbb")  # rewritten in place, same size and inode
    assert open_as_hashed(g, sha_g, small=1024) is None
    os.remove(tmp_path / "log.txt")
    assert open_as_hashed(g, sha_g, small=1024) is None  # deleted meanwhile


def test_a_large_file_that_grows_is_sent_as_its_first_hashed_bytes(tmp_path):
    data = os.urandom(10_000)
    f, sha = _hashed(tmp_path, "train_log.jsonl", data)
    body = open_as_hashed(f, sha, small=1024)
    with (tmp_path / "train_log.jsonl").open("ab") as log:
        log.write(b"a line the trainer appended meanwhile\n")
    assert body.seek(0, os.SEEK_END) == 10_000  # the size s3transfer takes for the upload
    body.seek(0)
    sent = b"".join(iter(lambda: body.read(4096), b""))
    assert sent == data and hashlib.sha256(sent).hexdigest() == sha
    body.seek(9_990)
    assert body.read(100) == data[9_990:]
    body.close()
