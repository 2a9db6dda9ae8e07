"""``python -m detector`` and the ``sound-detector`` console script (see detector/cli/main.py)."""

from __future__ import annotations

import os
import sys

# One BLAS thread: the log-mel matmuls are tiny, and OpenBLAS's spinning worker
# threads tripled the CPU time per second of audio (measured, README "runtime").
# Set before numpy is imported; an explicit value in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from detector.cli.main import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
