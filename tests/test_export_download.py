"""Dataset downloader against a real local HTTP server (Range support, injected faults).

Nothing is downloaded from the internet: the server serves a generated
archive in the UrbanSound8K layout (metadata CSV + FLAC/WAV clips in
audio/foldN/), which ``export.datasets.load_urbansound8k`` then reads.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from export import datasets_download as dl
from export.datasets import load_urbansound8k

ROWS = [  # slice_file_name, fsID, start, end, salience, fold, classID, class_name
    ("100032-3-0-0.wav", 100032, 0.0, 0.3, 1, 1, 3, "dog_bark"),
    ("100263-2-0-117.flac", 100263, 58.5, 62.5, 1, 1, 2, "children_playing"),
    ("102305-6-0-0.flac", 102305, 0.0, 2.6, 1, 2, 6, "gun_shot"),
]


def make_archive(kind: str = "tar.gz", traversal: str | None = None) -> bytes:
    """A small archive in the UrbanSound8K layout with real generated audio."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    lines = ["slice_file_name,fsID,start,end,salience,fold,classID,class_name"]
    for name, fsid, start, end, sal, fold, cid, label in ROWS:
        lines.append(f"{name},{fsid},{start},{end},{sal},{fold},{cid},{label}")
        buf = io.BytesIO()
        audio = (0.1 * rng.standard_normal((int(22050 * (end - start)), 2))).astype(np.float32)
        fmt = "WAV" if name.endswith(".wav") else "FLAC"
        sf.write(buf, audio, 22050, format=fmt, subtype="PCM_24" if fmt == "WAV" else "PCM_16")
        files[f"UrbanSound8K/audio/fold{fold}/{name}"] = buf.getvalue()
    files["UrbanSound8K/metadata/UrbanSound8K.csv"] = ("\n".join(lines) + "\n").encode()
    if traversal:
        files[traversal] = b"pwned\n"
    out = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Server:
    """Serves ``payload`` at /archive with HTTP Range support.

    ``cut_after``: on the first N requests, send only this many bytes of the
    body (with the full Content-Length) and close: a dropped connection.
    ``honour_range=False`` makes it ignore Range (always 200 + whole body).
    """

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None
        self.cuts_left = 0
        self.honour_range = True
        self.requests: list[dict] = []
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if owner.status != 200:
                    self.send_error(owner.status)
                    return
                data, start = owner.payload, 0
                rng = self.headers.get("Range")
                if rng and owner.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if owner.cuts_left > 0 and owner.cut_after is not None:
                    owner.cuts_left -= 1
                    self.wfile.write(body[:owner.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive_bytes():
    return make_archive()


@pytest.fixture
def server(archive_bytes):
    srv = Server(archive_bytes)
    yield srv
    srv.close()


def source_for(server, payload, **kw):
    fields = dict(name="us8k-test", url=server.url, filename="UrbanSound8K.tar.gz",
                  root="UrbanSound8K", md5=hashlib.md5(payload).hexdigest())
    fields.update(kw)
    return dl.DatasetSource(**fields)


def test_download_extract_and_load(server, archive_bytes, tmp_path):
    root = dl.download_dataset(source_for(server, archive_bytes), tmp_path, backoff_seconds=0)
    assert root == tmp_path / "UrbanSound8K"
    clips = load_urbansound8k(root)
    assert [c.path.name for c in clips] == [r[0] for r in ROWS]
    assert [c.label for c in clips] == [r[7] for r in ROWS]
    assert {c.fold for c in clips} == {1, 2}
    data, rate = sf.read(clips[0].path)
    assert rate == 22050 and data.shape == (int(22050 * 0.3), 2)
    # the archive is gone (not kept by default), no .part or temp dir left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [".us8k-test.complete.json",
                                                           "UrbanSound8K"]
    # second run: idempotent, no request at all
    n = len(server.requests)
    assert dl.download_dataset(source_for(server, archive_bytes), tmp_path) == root
    assert len(server.requests) == n


def test_interrupted_download_resumes_with_range(server, archive_bytes, tmp_path):
    server.cut_after = len(archive_bytes) // 3
    server.cuts_left = 2  # two dropped connections, then the rest arrives
    info = dl.download_file(server.url, tmp_path / "a.tar.gz",
                            md5=hashlib.md5(archive_bytes).hexdigest(), backoff_seconds=0)
    assert (tmp_path / "a.tar.gz").read_bytes() == archive_bytes
    assert info["verified"] and info["bytes"] == len(archive_bytes)
    ranges = [r["range"] for r in server.requests]
    cut = len(archive_bytes) // 3
    assert ranges == [None, f"bytes={cut}-", f"bytes={2 * cut}-"]
    assert not (tmp_path / "a.tar.gz.part").exists()


def test_part_file_from_earlier_run_is_resumed(server, archive_bytes, tmp_path):
    (tmp_path / "a.tar.gz.part").write_bytes(archive_bytes[:1000])
    dl.download_file(server.url, tmp_path / "a.tar.gz",
                     sha256=hashlib.sha256(archive_bytes).hexdigest(), backoff_seconds=0)
    assert server.requests[0]["range"] == "bytes=1000-"
    assert (tmp_path / "a.tar.gz").read_bytes() == archive_bytes


def test_complete_part_file_gets_416_and_is_verified(server, archive_bytes, tmp_path):
    (tmp_path / "a.tar.gz.part").write_bytes(archive_bytes)
    dl.download_file(server.url, tmp_path / "a.tar.gz",
                     md5=hashlib.md5(archive_bytes).hexdigest(), backoff_seconds=0)
    assert (tmp_path / "a.tar.gz").read_bytes() == archive_bytes


def test_server_ignoring_range_restarts_cleanly(server, archive_bytes, tmp_path):
    server.honour_range = False
    (tmp_path / "a.tar.gz.part").write_bytes(b"garbage from another file" * 10)
    dl.download_file(server.url, tmp_path / "a.tar.gz",
                     md5=hashlib.md5(archive_bytes).hexdigest(), backoff_seconds=0)
    assert (tmp_path / "a.tar.gz").read_bytes() == archive_bytes


def test_bad_checksum_keeps_nothing(server, archive_bytes, tmp_path):
    src = source_for(server, archive_bytes, md5="0" * 32)
    with pytest.raises(dl.DownloadError) as err:
        dl.download_dataset(src, tmp_path, backoff_seconds=0)
    msg = str(err.value)
    assert "\n" not in msg and "md5" in msg and "0" * 32 in msg
    assert list(tmp_path.iterdir()) == []  # no archive, no .part, no dataset, no marker


def test_path_traversal_archive_is_refused(tmp_path):
    payload = make_archive(traversal="UrbanSound8K/../../escaped.txt")
    srv = Server(payload)
    try:
        dest = tmp_path / "dest"
        with pytest.raises(dl.DownloadError, match="unsafe member"):
            dl.download_dataset(source_for(srv, payload), dest, backoff_seconds=0)
    finally:
        srv.close()
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "UrbanSound8K").exists()
    assert not (dest / ".us8k-test.complete.json").exists()


@pytest.mark.parametrize("bad", ["/tmp/absolute-member.txt", "../zip-escape.txt"])
def test_unsafe_zip_is_refused(tmp_path, bad):
    archive = tmp_path / "x.zip"
    archive.write_bytes(make_archive("zip", traversal=bad))
    with pytest.raises(dl.DownloadError, match="unsafe member"):
        dl.extract_archive(archive, tmp_path / "dest", "UrbanSound8K")
    assert not (tmp_path / "zip-escape.txt").exists()
    assert not Path("/tmp/absolute-member.txt").exists()


def test_symlink_in_tar_is_refused(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        link = tarfile.TarInfo("UrbanSound8K/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(out.getvalue())
    with pytest.raises(dl.DownloadError, match="link"):
        dl.extract_archive(archive, tmp_path / "dest", "UrbanSound8K")


def test_zip_archive_esc50_style(tmp_path):
    payload = make_archive("zip")
    srv = Server(payload)
    try:
        src = source_for(srv, payload, filename="x.zip", md5=None)  # unverified, like ESC-50
        root = dl.download_dataset(src, tmp_path, keep_archive=True, backoff_seconds=0)
    finally:
        srv.close()
    assert (root / "metadata" / "UrbanSound8K.csv").is_file()
    assert (tmp_path / "x.zip").read_bytes() == payload
    marker = (tmp_path / ".us8k-test.complete.json").read_text()
    assert hashlib.sha256(payload).hexdigest() in marker and '"verified": false' in marker


def test_network_failure_is_one_line(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/nothing-listens-here"
    delays = []
    real_sleep, me = time.sleep, threading.current_thread()

    def sleep(seconds):  # time.sleep is global: other tests' threads keep their own sleeps
        if threading.current_thread() is me:
            delays.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(dl.time, "sleep", sleep)
    args = argparse.Namespace(dataset="esc50", dest=tmp_path, url=url, md5=None, sha256=None,
                              keep_archive=False, retries=2, timeout=2.0)
    assert dl.run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "failed after 2 retries" in err and "resume" in err
    assert delays == [2.0, 4.0]  # exponential backoff


def test_http_404_is_one_line_without_retry(server, archive_bytes, tmp_path):
    server.status = 404
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download_file(server.url, tmp_path / "a", retries=3, backoff_seconds=0)
    assert len(server.requests) == 1


def test_table_has_checksum_for_urbansound8k():
    us = dl.DATASETS["urbansound8k"]
    assert us.md5 == "9aa69802bbf37fb986f71ec1483a196e"
    assert us.url.startswith("https://zenodo.org/records/1203745/")
    assert dl.DATASETS["esc50"].md5 is None and dl.DATASETS["esc50"].sha256 is None
