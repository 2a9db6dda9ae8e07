"""Download the public datasets people train and evaluate on.

``python -m export download urbansound8k --dest data/`` fetches the archive with
a resumable, verified, retrying HTTP download and extracts it safely:

* the archive is streamed into ``<name>.part``; an interrupted run (network
  error, Ctrl-C) resumes it with an HTTP ``Range`` request instead of starting
  over, and a server that ignores ``Range`` restarts it cleanly;
* the finished file is checked against the checksum in :data:`DATASETS` (or
  ``--sha256`` / ``--md5``); a mismatch deletes it and stops with one line, so
  nothing corrupt is ever left under the final name;
* extraction rejects absolute paths, ``..`` members, links and device files,
  and happens in a temporary directory that is renamed only when complete;
* a second run finds the completion marker and does nothing.

Network failures are retried with exponential backoff and end in one line
(:class:`DownloadError`), never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from detector.errors import DetectorError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "sound-detector-dataset-download/1"


class DownloadError(DetectorError):
    """Download, checksum or extraction failure (one line naming the problem and the fix)."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a public dataset lives and how to check it."""

    name: str
    """Name used on the command line."""
    url: str
    """Archive URL."""
    filename: str
    """File name of the archive under ``--dest``."""
    root: str
    """Top-level directory the archive extracts to (the dataset root)."""
    md5: str | None = None
    """Published MD5 of the archive, or None."""
    sha256: str | None = None
    """Published SHA-256 of the archive, or None."""
    approx_bytes: int | None = None
    """Approximate archive size, shown before the download starts (not verified)."""
    note: str = ""
    """What the user should know (license, missing checksum)."""


DATASETS: dict[str, DatasetSource] = {
    "urbansound8k": DatasetSource(
        name="urbansound8k",
        url="https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz",
        filename="UrbanSound8K.tar.gz",
        root="UrbanSound8K",
        # MD5 as published on the Zenodo record 1203745 (also used by soundata
        # and PaddleSpeech for the same file).
        md5="9aa69802bbf37fb986f71ec1483a196e",
        approx_bytes=6_000_000_000,
        note="UrbanSound8K (Salamon et al. 2014), CC BY-NC 3.0: non-commercial use only.",
    ),
    "esc50": DatasetSource(
        name="esc50",
        url="https://github.com/karolpiczak/ESC-50/archive/master.zip",
        filename="ESC-50-master.zip",
        root="ESC-50-master",
        approx_bytes=650_000_000,
        note=("ESC-50 (Piczak 2015), CC BY-NC 3.0. GitHub publishes no checksum for this "
              "branch archive: the download is NOT verified; its SHA-256 and size are "
              "recorded in the completion marker (pin them with --sha256)."),
    ),
}


# --------------------------------------------------------------------------- download

def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety; the download works without it
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, file=sys.stderr, disable=None)


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes 100-199/*`` -> (100, None)."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        start = int(span.split("-")[0])
        return start, (int(total) if total.strip() != "*" else None)
    except ValueError:
        return None


def _fetch_once(url: str, part: Path, timeout: float, desc: str) -> None:
    """One HTTP attempt: append to ``part`` (resuming) until the body ends.

    Raises ``OSError``/``http.client.HTTPException`` for retryable failures and
    :class:`DownloadError` for permanent ones.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Nothing left to send: the part is complete (the checksum decides).
            logger.info("server has no bytes after %d: part file is complete", have)
            return
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise ConnectionError(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; "
                            "check the URL (--url) or try again later") from None
    with response:
        mode = "ab"
        total = None
        if have and response.status == 206:
            start_total = _content_range(response.headers.get("Content-Range"))
            if start_total is None or start_total[0] != have:
                raise ConnectionError("server answered the resume request with a wrong "
                                      f"Content-Range {response.headers.get('Content-Range')!r}")
            total = start_total[1]
            logger.info("resuming %s at %d bytes", part.name, have)
        else:
            if have:
                logger.warning("server ignored the Range request: restarting %s", part.name)
            mode, have = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        bar = _progress(total, have, desc)
        received = have
        try:
            with part.open(mode) as out:
                while True:
                    chunk = response.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and received < total:
            raise http.client.IncompleteRead(b"", total - received)


def download_file(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
                  retries: int = 5, timeout: float = 30.0, backoff_seconds: float = 2.0,
                  max_backoff_seconds: float = 60.0) -> dict:
    """Download ``url`` to ``dest`` through ``dest.part`` with resume, retries and checksum.

    Returns ``{"path", "bytes", "sha256", "md5", "verified"}``. If ``dest``
    already exists and matches the checksum it is not downloaded again.
    Raises :class:`DownloadError` with one line on any permanent failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def verify(path: Path) -> dict:
        size = path.stat().st_size
        got_sha = _hash_file(path, "sha256")
        got_md5 = _hash_file(path, "md5") if md5 else None
        for algo, want, got in (("md5", md5, got_md5), ("sha256", sha256, got_sha)):
            if want and want.lower() != got:
                path.unlink()
                raise DownloadError(
                    f"{algo} of {path.name} is {got}, expected {want}: the file was deleted; "
                    "run again to re-download, or pass --url/--md5/--sha256 if the source changed")
        return {"path": str(dest), "bytes": size, "sha256": got_sha, "md5": got_md5,
                "verified": bool(md5 or sha256)}

    if dest.exists():
        logger.info("%s exists: verifying", dest.name)
        return verify(dest)

    attempt = 0
    while True:
        try:
            _fetch_once(url, part, timeout, dest.name)
            break
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            attempt += 1
            reason = getattr(exc, "reason", None) or exc
            if attempt > retries:
                raise DownloadError(
                    f"download of {url} failed after {retries} retries ({reason}); "
                    f"run the same command again to resume from {part.name}") from None
            delay = min(max_backoff_seconds, backoff_seconds * 2 ** (attempt - 1))
            logger.warning("download interrupted (%s); retry %d/%d in %.1f s",
                           reason, attempt, retries, delay)
            time.sleep(delay)
    if not part.exists():
        raise DownloadError(f"download of {url} produced no data; check the URL (--url)")
    info = verify(part)
    os.replace(part, dest)
    info["path"] = str(dest)
    return info


# --------------------------------------------------------------------------- extraction

def _safe_member_path(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise DownloadError(f"{archive.name} contains the unsafe member {name!r} (absolute "
                            "path or '..'): refusing to extract it; the archive is not the "
                            "expected dataset")
    return path


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        members = []
        for member in tar:
            _safe_member_path(member.name, archive)
            if member.issym() or member.islnk() or member.isdev() or member.isfifo():
                raise DownloadError(f"{archive.name} contains the link or special file "
                                    f"{member.name!r}: refusing to extract it")
            if member.isfile() or member.isdir():
                members.append(member)
        for member in members:
            # data_filter (Python >= 3.11.4 / 3.10.12) additionally strips setuid bits etc.
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, into, filter="data")
            else:
                tar.extract(member, into)


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_member_path(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DownloadError(f"{archive.name} contains the symbolic link "
                                    f"{info.filename!r}: refusing to extract it")
        root = into.resolve()
        for info in infos:
            target = (into / info.filename).resolve()
            if target != root and root not in target.parents:
                raise DownloadError(f"{archive.name} member {info.filename!r} points outside "
                                    "the destination: refusing to extract it")
            zf.extract(info, into)


def extract_archive(archive: Path, dest: Path, root: str) -> Path:
    """Extract ``archive`` so that ``dest/root`` appears complete, or not at all."""
    archive, dest = Path(archive), Path(dest)
    final = dest / root
    tmp = dest / f".{root}.extracting"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp)
            else:
                raise DownloadError(f"{archive} is neither a tar nor a zip archive; delete it "
                                    "and run again")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            if isinstance(exc, DownloadError):
                raise
            raise DownloadError(f"cannot extract {archive.name}: {exc}; delete it and run "
                                "again") from None
        extracted = tmp / root
        if not extracted.is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise DownloadError(f"{archive.name} does not contain the directory {root!r} "
                                f"(found {found[:5]}); is --url the right archive?")
        if final.exists():
            shutil.rmtree(final)
        os.replace(extracted, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- dataset

def _marker(dest: Path, source: DatasetSource) -> Path:
    return dest / f".{source.name}.complete.json"


def download_dataset(source: DatasetSource | str, dest: Path, *, keep_archive: bool = False,
                     retries: int = 5, timeout: float = 30.0,
                     backoff_seconds: float = 2.0) -> Path:
    """Download, verify and extract a dataset into ``dest``; return the dataset root.

    Idempotent: a completed download (marker file present, root directory
    present) is not fetched again.
    """
    if isinstance(source, str):
        if source not in DATASETS:
            raise DownloadError(f"unknown dataset {source!r}; choose one of {sorted(DATASETS)}")
        source = DATASETS[source]
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create --dest {dest}: {exc.strerror}") from None
    marker, root = _marker(dest, source), dest / source.root
    if marker.exists() and root.is_dir():
        recorded = json.loads(marker.read_text())
        if recorded.get("url") == source.url:
            logger.info("%s is already present in %s (sha256 %s); nothing to do",
                        source.name, root, recorded.get("sha256"))
            return root
    if source.note:
        logger.info("%s", source.note)
    if not (source.md5 or source.sha256):
        logger.warning("no checksum known for %s: the archive cannot be verified", source.url)
    if source.approx_bytes:
        logger.info("downloading %s (about %.1f GB) to %s", source.url,
                    source.approx_bytes / 1e9, dest)
    archive = dest / source.filename
    info = download_file(source.url, archive, md5=source.md5, sha256=source.sha256,
                         retries=retries, timeout=timeout, backoff_seconds=backoff_seconds)
    logger.info("extracting %s", archive.name)
    extract_archive(archive, dest, source.root)
    record = {"dataset": source.name, "url": source.url, "bytes": info["bytes"],
              "sha256": info["sha256"], "md5": info["md5"], "verified": info["verified"],
              "root": source.root}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    if not keep_archive:
        archive.unlink()
    logger.info("%s ready in %s (%d bytes, sha256 %s%s)", source.name, root, info["bytes"],
                info["sha256"], "" if info["verified"] else ", NOT verified: no checksum known")
    return root


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Download and extract a public dataset (resumable, checksummed, "
                          "safe extraction). Re-running after an interruption resumes.")
    parser.add_argument("dataset", choices=sorted(DATASETS),
                        help="urbansound8k: Zenodo 1203745 (~6 GB, MD5-verified); "
                             "esc50: GitHub ESC-50 master.zip (~0.6 GB, no published checksum)")
    parser.add_argument("--dest", required=True, type=Path,
                        help="directory to put the dataset in (the dataset root is created "
                             "inside it, e.g. DEST/UrbanSound8K)")
    parser.add_argument("--url", help="download from this URL instead (a mirror)")
    parser.add_argument("--md5", help="expected MD5 of the archive (overrides the table)")
    parser.add_argument("--sha256", help="expected SHA-256 of the archive (overrides the table)")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the archive after extraction (default: delete it)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries after a network error, with exponential backoff (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="socket timeout in seconds (default 30)")


def run(args: argparse.Namespace) -> int:
    source = DATASETS[args.dataset]
    overrides = {}
    if args.url:
        overrides["url"] = args.url
    if args.md5 or args.sha256:
        overrides["md5"] = args.md5
        overrides["sha256"] = args.sha256
    source = replace(source, **overrides)
    try:
        root = download_dataset(source, args.dest, keep_archive=args.keep_archive,
                                retries=args.retries, timeout=args.timeout)
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(root)
    return 0


def main(argv: list[str] | None = None) -> int:
    from export._cli import run_command

    return run_command(sys.modules[__name__], "python -m export download", argv)


if __name__ == "__main__":
    sys.exit(main())
