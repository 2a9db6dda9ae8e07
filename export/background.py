"""``python -m export background-embeddings --model M.onnx --out OUT.npz``.

The background set custom labels are fitted against (see :mod:`detector.model.custom`):
the embeddings the daemon's own pipeline gives for everyday sounds that are no
label, a few windows per file, with the kind of each file, for one model
version. Made from ``negatives/esc50`` (kinds from ``esc50.csv``),
``negatives/dcase2016_office`` (kind from the file name) and ``sesa/casual``
under ``--data``. For the shipped model, write it to
``detector/models/background-<model_version>.npz`` (the default ``--out``),
and make it again whenever the shipped model changes. numpy + onnxruntime only.
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import time
from pathlib import Path

import numpy as np

from detector.cli.custom_fit import BACKGROUND_FARTHER_DB, ROOM_FLOOR_DBFS
from detector.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = ("esc50", "dcase2016_office", "casual")
WINDOWS_PER_FILE = 8
"""Windows kept per file (the loudest half first, evenly spread): keeps the set compact."""


def background_files(data: Path, sources=SOURCES, skip_kinds=()) -> list[tuple[Path, str]]:
    """``(path, kind)`` of every background file of the chosen sources, sorted."""
    out: list[tuple[Path, str]] = []
    skip = set(skip_kinds)
    if "esc50" in sources:
        folder = data / "negatives" / "esc50"
        table = folder / "esc50.csv"
        if not table.is_file():
            raise ConfigError(f"{table} is missing; pass --data (the shared data root)")
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                out.append((folder / row["filename"], row["category"]))
    if "dcase2016_office" in sources:
        folder = data / "negatives" / "dcase2016_office"
        files = sorted(folder.glob("*.flac"))
        if not files:
            raise ConfigError(f"{folder} holds no .flac files; pass --data")
        for path in files:
            match = re.search(r"_([a-z]+)_\d+\.flac$", path.name)
            out.append((path, match.group(1) if match else "office"))
    if "casual" in sources:
        folder = data / "sesa" / "casual"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".wav", ".flac"))
        if not files:
            raise ConfigError(f"{folder} holds no audio; pass --data")
        out.extend((path, "casual") for path in files)
    return sorted((p, k) for p, k in out if k not in skip)


def build(model: str | Path, files: list[tuple[Path, str]], per_file: int = WINDOWS_PER_FILE,
          progress: bool = True, min_floor_dbfs: float | None = None,
          farther_db: tuple[float, ...] = BACKGROUND_FARTHER_DB):
    """The :class:`detector.cli.custom_fit.BackgroundSet` of ``files`` through ``model``: each
    file as it is and ``farther_db`` quieter (a copy is a file of its own, of the same
    kind, with the original as its origin)."""
    from detector.config import Config
    from detector.cli.custom_fit import BackgroundSet, embed_samples, read_audio, spread
    from detector.model.classifier import Classifier

    classifier = Classifier(model)
    if classifier.embedding_name is None:
        raise ModelError(f"model {model} has no embedding output (embedding_output metadata)")
    config = Config()
    gate = config.events.gate_dbfs
    rate = classifier.model_metadata.features.sample_rate
    kinds = sorted({k for _, k in files})
    file_kinds: list[str] = []
    embeddings, ids, probs = [], [], []
    logging.getLogger("detector.pipeline").setLevel(logging.WARNING)
    gains = (0.0, *farther_db)
    for n, (path, kind) in enumerate(files):
        samples = read_audio(path, rate)
        for j, gain in enumerate(gains):
            win = embed_samples(classifier, samples * np.float32(10 ** (gain / 20)), config,
                                name=path.name, seed=n, min_floor_dbfs=min_floor_dbfs)
            keep = spread(np.flatnonzero(win.levels >= gate), per_file)
            file_id = n + j * len(files)
            if keep.size:
                embeddings.append(win.embeddings[keep])
                ids.append(np.full(keep.size, file_id))
                if win.audioset is not None:
                    probs.append(win.audioset[keep])
        file_kinds.append(kind)
        if progress and (n + 1) % 50 == 0:
            logger.info("%d/%d files", n + 1, len(files))
    del kinds
    file_kinds = file_kinds * len(gains)
    origins = np.tile(np.arange(len(files)), len(gains))
    return BackgroundSet(np.vstack(embeddings), np.concatenate(ids), file_kinds,
                         classifier.model_metadata.model_version, origins,
                         np.vstack(probs) if probs and len(probs) == len(embeddings) else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="ONNX model with an embedding output")
    parser.add_argument("--out", help="output .npz (default: detector/models/"
                        "background-<model_version>.npz)")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="shared data root holding negatives/ and sesa/ (default: %(default)s)")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                        help="which collections to read (default: all)")
    parser.add_argument("--skip-kind", action="append", default=[], metavar="KIND",
                        help="leave a kind out (e.g. to hold it out of an evaluation)")
    parser.add_argument("--min-floor-dbfs", type=float, default=ROOM_FLOOR_DBFS,
                        help="files quieter than this between sounds are heard in white noise "
                        "at this level, as in a room (default: %(default)s)")
    parser.add_argument("--windows-per-file", type=int, default=WINDOWS_PER_FILE,
                        help="windows kept per file (default: %(default)s)")
    parser.add_argument("--farther-db", type=float, nargs="*",
                        default=list(BACKGROUND_FARTHER_DB), metavar="DB",
                        help="also hear every file this many dB quieter, as a file of its own "
                        "(default: %(default)s; none: no copies)")


def run(args: argparse.Namespace) -> int:
    from detector.cli.custom_fit import shipped_background_path

    if args.windows_per_file < 1:
        raise ConfigError(f"--windows-per-file {args.windows_per_file} must be >= 1")
    if any(g >= 0 for g in args.farther_db):
        raise ConfigError(f"--farther-db {args.farther_db}: copies must be quieter (< 0 dB)")
    files = background_files(Path(args.data), args.sources, args.skip_kind)
    started = time.process_time()
    bg = build(args.model, files, args.windows_per_file, min_floor_dbfs=args.min_floor_dbfs,
               farther_db=tuple(args.farther_db))
    out = Path(args.out) if args.out else shipped_background_path(bg.model_version)
    bg.save(out)
    print(f"wrote {out}: {bg.embeddings.shape[0]} windows x {bg.embeddings.shape[1]} from "
          f"{len(files)} files x {1 + len(args.farther_db)} levels ({len(set(bg.kinds))} kinds), "
          f"model {bg.model_version}, "
          f"{out.stat().st_size / 1e6:.2f} MB, {time.process_time() - started:.1f} s CPU")
    return 0


def main(argv: list[str] | None = None) -> int:
    from export._cli import run_command

    return run_command(__import__(__name__, fromlist=["run"]), "python -m export.background",
                       argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
