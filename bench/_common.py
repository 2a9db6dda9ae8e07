"""What every ``python -m bench`` subcommand shares: the run-and-measure helper
(:func:`run_child`), the stamp every results file carries (:func:`begin`, :func:`finish`:
machine, load, date, command), a private Mosquitto, test audio."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Debian installs the broker as /usr/sbin/mosquitto, which a plain user's PATH
# (/usr/local/bin:/usr/bin:/bin) does not hold; its tools live in /usr/bin.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def mosquitto_binary(name: str = "mosquitto") -> str | None:
    """The full path of a Mosquitto program (``mosquitto``, ``mosquitto_passwd``), looked
    up on PATH and then in the sbin folders, or None when it is not installed. Every test
    and benchmark starts the broker through this, never by a bare name."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS])
    return shutil.which(name, path=search)


class Broker:
    """A real Debian mosquitto on a free loopback port (context manager); ``stop`` and
    ``start`` take it away and bring it back on the same port."""

    def __init__(self):
        self.exe = mosquitto_binary()
        if self.exe is None:
            raise SystemExit("mosquitto is not installed: run scripts/setup-test-deps.sh")
        if threading.current_thread() is threading.main_thread():
            # A terminated bench unwinds its `with Broker()` block instead of orphaning
            # the broker process.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             "persistence false\nmax_queued_messages 100000\n")
        self.proc = None
        self.start()

    def start(self) -> None:
        """Start the broker; returns once its port listens."""
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.close()
        raise SystemExit(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def demo_audio(sr: int) -> np.ndarray:
    """The bundled demo clip (a real-life street scene with a siren and a car horn) at ``sr``."""
    from detector.audio.capture import DEMO_CLIP
    from detector.cli.analysis import load_audio

    y, _ = load_audio(DEMO_CLIP, sr)
    return y


def write_tiled(y: np.ndarray, sr: int, seconds: float, path: Path) -> Path:
    """``y`` repeated to ``seconds`` as a 16-bit WAV (what a replay reads from disk)."""
    import soundfile as sf

    n = int(seconds * sr)
    reps = int(np.ceil(n / len(y)))
    sf.write(str(path), np.tile(y, reps)[:n], sr, subtype="PCM_16")
    return path


def machine() -> dict:
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_avg_1min_at_start": round(load, 2) if load is not None else None}


def percentiles(values, ps=(50, 95, 99)) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{p}": None for p in ps}
    return {f"p{p}": round(float(np.percentile(arr, p)), 4) for p in ps}


def begin(sub: str, argv) -> dict:
    """The start of a results file: which subcommand, the command line (file names only,
    never a local path), the machine and its load now."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return {"bench": sub, "command": "python -m bench " + " ".join(
        [sub] + [shlex.quote(Path(a).name if "/" in a else a) for a in args]),
        "machine": machine()}


def finish(result: dict, name: str, out_dir, markdown) -> Path:
    """Stamp the load at the end, write ``<name>.json``, ``<name>.md`` (``markdown``
    renders the JSON, so the table always says what the file holds) and ``<name>.png``
    (drawn from the JSON too), and print the table."""
    result["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    md = markdown(result)
    path = save(name, result, md, out_dir)
    from bench._plots import write as plot

    picture = plot(result, path.with_suffix(".png"))
    print(md)
    print(f"-> {path}" + (f", {picture.name}" if picture else ""))
    return path


SUBCOMMANDS = ("cost", "latency", "quality", "scale", "peer")


def markdown_of(path: Path) -> str:
    """The table of a results JSON written by ``python -m bench``, rendered again from it
    (what ``scripts/sync_docs.py`` puts into a docs block naming a ``.json`` file)."""
    import importlib

    result = json.loads(Path(path).read_text())
    if Path(path).name == "pi_estimate.json":  # kept from a settled experiment
        from bench.cost import pi_markdown
        return pi_markdown(result)
    sub = result.get("bench")
    if sub not in SUBCOMMANDS:
        raise SystemExit(f"{path}: not written by python -m bench (no known 'bench' key)")
    return importlib.import_module(f"bench.{sub}").markdown(result)


def stamp_line(r: dict) -> str:
    """Machine, date, load and command of a results file, as one line under its table."""
    m = r["machine"]
    return (f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, shared; 1-min load "
            f"{m['load_avg_1min_at_start']} at start, {r.get('load_avg_1min_at_end')} at end) "
            f"by `{r['command']}`.")


def run_line(r: dict) -> str:
    """The line under a results page's title: the command, date, machine and load."""
    m = r["machine"]
    return (f"`{r['command']}` — {m['date']}, {m['cpu']} ({m['cores']} cores), load "
            f"{m['load_avg_1min_at_start']} at start, {r['load_avg_1min_at_end']} at end.")


def save(name: str, result: dict, markdown: str, out_dir: Path | None) -> Path:
    out_dir = Path(out_dir) if out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{name}.md").write_text(markdown)
    return out_dir / f"{name}.md"


SHARED_DATA = REPO.parent / "shared" / "data"
"""Real recordings (see the data README); bench scripts fall back to the demo clip without them."""


def real_scene(seconds: float, sr: int = 16000, data: Path | None = None,
               gap_seconds: float = 0.5, noise_dbfs: float = -60.0,
               used: list | None = None) -> tuple[np.ndarray, str]:
    """``seconds`` of real recordings back to back: UrbanSound8K, SESA and everyday
    (negatives) clips taken in turn, in a fixed order, each after ``gap_seconds`` of
    seeded noise at ``noise_dbfs``. Returns the audio and one line saying what it is;
    without the data, the bundled demo clip tiled (and says so)."""
    import soundfile as sf

    data = Path(data) if data is not None else SHARED_DATA
    kinds = [sorted((data / "urbansound8k" / "audio").glob("fold*/*.flac")),
             sorted((data / "sesa").glob("*/*.flac")),
             sorted((data / "negatives").glob("*/*.flac"))]
    kinds = [k for k in kinds if k]
    if not kinds:
        n = int(seconds * sr)
        y = demo_audio(sr)
        return np.tile(y, int(np.ceil(n / len(y))))[:n].astype(np.float32), \
            "the bundled demo clip, tiled (no real recordings found)"
    rng = np.random.default_rng(0)
    n = int(seconds * sr)
    parts, total, count, step = [], 0, 0, 0
    gap = int(gap_seconds * sr)
    amp = 10 ** (noise_dbfs / 20)
    while total < n:
        files = kinds[step % len(kinds)]
        path = files[(step // len(kinds) * 7919) % len(files)]  # spread over each list
        step += 1
        y, rate = sf.read(str(path), dtype="float32", always_2d=True)
        if rate != sr:
            continue
        parts += [(amp * rng.standard_normal(gap)).astype(np.float32), y.mean(axis=1)]
        if used is not None:  # the caller wants to know which clips the scene holds
            used.append(path)
        total += gap + len(y)
        count += 1
    out = np.concatenate(parts)[:n]
    return out, (f"{count} real clips (UrbanSound8K, SESA, everyday negatives) back to back, "
                 f"each after {gap_seconds:g} s of {noise_dbfs:g} dBFS noise")


def write_scene_in_child(seconds: float, paths) -> tuple[str, int]:
    """:func:`real_scene` written (16-bit, 16 kHz) to every path by a separate process, so
    the caller stays small: a child's ``ru_maxrss`` starts from its parent's RSS at fork
    (Linux keeps the high-water mark across exec), so a bench that holds the audio would
    hide the peak RSS of the processes it measures. Returns (what it is, samples)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import soundfile as sf; "
            "from bench._common import real_scene; y, what = real_scene(float(sys.argv[2])); "
            "[sf.write(p, y, 16000, subtype='PCM_16') for p in sys.argv[3:]]; "
            "print(json.dumps([what, len(y)]))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(seconds),
                          *map(str, paths)], check=True, capture_output=True, text=True).stdout
    what, samples = json.loads(out.strip().splitlines()[-1])
    return what, int(samples)


def rss_mb() -> float:
    """This process's resident set size in MB (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def export_revision(rev: str, dest: Path) -> str:
    """The tree of git revision ``rev`` extracted into ``dest``; returns its short sha."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return sha


def head() -> str:
    """The working tree's commit, marked ``+changes`` when tracked files differ from it."""
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return sha + (" +changes" if dirty else "")


def child_env(tree: Path | str = REPO, pycache: Path | str | None = None) -> dict:
    """The environment a measured child runs in: ``tree`` first on the import path, one
    BLAS thread (as the CLI sets), and, with ``pycache``, Python's bytecode cache written
    and read there (``PYTHONDONTWRITEBYTECODE`` removed), so the child loads compiled
    modules as an installed package does instead of compiling every module at start."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


class ChildRun:
    """What :func:`run_child` measured of one process."""

    def __init__(self, cmd, returncode: int, cpu_seconds: float, wall_seconds: float,
                 maxrss_mb: float, stdout: str, stderr: str):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.cpu_seconds = cpu_seconds
        """User + system CPU of the child (all its threads), from its own rusage."""
        self.wall_seconds = wall_seconds
        self.maxrss_mb = maxrss_mb
        """The child's ``ru_maxrss``: Linux carries the parent's RSS at the fork into it,
        so it is the child's own peak only when that is above the parent's RSS."""
        self.stdout = stdout
        self.stderr = stderr

    def last_line(self) -> str:
        """The last stderr line (what a failing command said)."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def check(self, who: str) -> "ChildRun":
        """Exit with one line naming ``who`` when the child failed."""
        if self.returncode != 0:
            raise SystemExit(f"{who}: {' '.join(map(str, self.cmd[:4]))} failed "
                             f"({self.returncode}): {self.last_line()}")
        return self


def run_child(cmd, env: dict | None = None, cwd: Path | str = REPO) -> ChildRun:
    """Run ``cmd`` to its end and measure it alone: CPU (user + system) and ``ru_maxrss``
    from ``wait4`` of that child, wall time, and its stdout / stderr (through temporary
    files, so a chatty child never blocks on a full pipe while it is being waited for)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=out,
                                stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(cmd, proc.returncode, usage.ru_utime + usage.ru_stime, wall,
                        usage.ru_maxrss / 1024.0, out.read(), err.read())
