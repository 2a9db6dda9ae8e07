"""Black-box CLI tests: ``python -m detector ...`` as a subprocess, exit codes and output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnx_models import make_band_model, write_tone_wav

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=60, input=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("SOUND_DETECTOR_MQTT_PASSWORD", None)
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=REPO, input=input)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("sound-detector: error:")]
    assert len(lines) == 1, result.stderr
    # nothing but log lines (with a level) besides the error
    others = [l for l in result.stderr.splitlines() if l not in lines]
    assert all(" INFO " in l or " WARNING " in l for l in others), others
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = make_band_model(d / "tiny.onnx")
    tone = write_tone_wav(d / "tone.wav", [(1.0, 2.5, 1000.0)], seconds=4.0)
    return d, model, tone


def test_replay_prints_json_events_and_exits_0(files):
    d, model, tone = files
    result = cli("replay", tone, "--model", model)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["type"], e["label"]) for e in events] == [("start", "siren"), ("end", "siren")]
    assert events[1]["duration_s"] > 1.0
    assert "Traceback" not in result.stderr


def test_replay_show_scores_lines_start_with_the_position_in_the_file(files):
    d, model, tone = files  # 4 s file, tone 1.0-2.5 s
    result = cli("replay", tone, "--model", model, "--show-scores")
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stderr.splitlines() if " dBFS " in l]
    positions = [float(re.match(r"\s*(\d+\.\d\d) s  ", l).group(1)) for l in lines]
    assert positions == sorted(positions) and positions[0] >= 0.9 and 3.5 <= positions[-1] <= 4.0
    # the siren line is loudest while the tone plays
    loud = [p for p, l in zip(positions, lines) if re.search(r"siren 0\.[5-9]|siren 1\.0", l)]
    assert loud and 1.0 <= min(loud) <= 2.5, lines
    assert len(result.stdout.splitlines()) == 2  # the events still go to stdout


def test_replay_with_config_and_relative_model_path(files, tmp_path):
    d, model, tone = files
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(model.read_bytes())
    conf = tmp_path / "c.toml"
    conf.write_text('[model]\npath = "models/m.onnx"\n[events]\nlabels = ["dog_bark"]\n'
                    '[mqtt]\nnode_id = "n1"\n')
    result = cli("replay", tone, "--config", conf)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # siren disabled by the config


def test_replay_realtime_paces_the_file(files, tmp_path):
    d, model, _ = files
    short = write_tone_wav(tmp_path / "short.wav", [(0.1, 1.2, 1000.0)], seconds=1.5)
    started = time.monotonic()
    result = cli("replay", short, "--model", model, "--realtime")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.4  # not a speed assert: pacing must not be skipped
    assert [json.loads(l)["type"] for l in result.stdout.splitlines()] == ["start", "end"]


@pytest.mark.parametrize("case", ["corrupt", "missing", "text", "directory"])
def test_bad_audio_files(files, tmp_path, case):
    d, model, tone = files
    path = tmp_path / "bad.wav"
    if case == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    elif case == "text":
        path.write_text("hello, not audio\n")
    elif case == "directory":
        path = tmp_path
    line = one_error_line(cli("replay", path, "--model", model))
    assert str(path.name) in line or str(path) in line


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("random", "cannot be loaded as ONNX"),
    ("nometa", "lacks metadata"),
])
def test_bad_models(files, tmp_path, case, expected):
    d, model, tone = files
    path = tmp_path / f"{case}.onnx"
    if case == "random":
        path.write_bytes(os.urandom(4000))
    elif case == "nometa":
        make_band_model(path, with_metadata=False)
    line = one_error_line(cli("replay", tone, "--model", path))
    assert expected in line


@pytest.mark.parametrize("text, expected", [
    ("[events]\ncooldown_seconds = -1\n", "events.cooldown_seconds=-1 must be >= 0"),
    ("[evnts]\n", "unknown section [evnts]"),
    ("[events]\nthresholds = { cat = 0.5 }\n", "names 'cat', which model"),
    ("not toml at all [\n", "invalid TOML"),
])
def test_bad_configs(files, tmp_path, text, expected):
    d, model, tone = files
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    assert expected in one_error_line(cli("replay", tone, "--model", model, "--config", conf))


def test_validate_config(files, tmp_path):
    d, model, _ = files
    good = tmp_path / "good.toml"
    good.write_text("[events]\nthresholds = { siren = 0.6 }\n")
    ok = cli("validate-config", good, "--model", model)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: ") and "band-test-1" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 0\n")
    assert "mqtt.port=0 must be >= 1" in one_error_line(cli("validate-config", bad, "--no-model"))
    secret = tmp_path / "secret.toml"
    secret.write_text('[mqtt]\npassword = "hunter2-xyz"\n')
    secret.chmod(0o644)
    result = cli("validate-config", secret, "--no-model")
    line = one_error_line(result)
    assert "readable by every user" in line and "hunter2-xyz" not in result.stderr
    example = REPO / "detector" / "data" / "config.example.toml"
    assert cli("validate-config", example, "--no-model").returncode == 0


def test_config_prints_the_commented_example_and_the_missing_config_error_names_it(files, tmp_path):
    d, model, tone = files
    printed = cli("config")
    assert printed.returncode == 0, printed.stderr
    example = (REPO / "detector" / "data" / "config.example.toml").read_text()
    assert printed.stdout == example and "# " in printed.stdout
    # what it prints is a config the daemon accepts as it is
    conf = tmp_path / "from-command.toml"
    conf.write_text(printed.stdout)
    assert cli("validate-config", conf, "--no-model").returncode == 0
    missing = tmp_path / "nope.toml"
    line = one_error_line(cli("replay", tone, "--model", model, "--config", missing))
    assert f"`sound-detector config > {missing}`" in line


def test_usage_errors_exit_2():
    result = cli("replay", "--no-such-flag")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert cli().returncode == 2
    assert "run" in cli("--help").stdout


def test_debug_logging_and_no_timestamps_under_journald(files):
    d, model, tone = files
    debug = cli("replay", tone, "--model", model, "--debug")
    assert debug.returncode == 0 and " DEBUG detector.pipeline: start siren" in debug.stderr
    journald = cli("replay", tone, "--model", model, env={"JOURNAL_STREAM": "8:12345"})
    assert journald.returncode == 0
    first = journald.stderr.splitlines()[0]
    assert first.startswith("INFO "), first  # journald adds its own timestamps
    plain = cli("replay", tone, "--model", model)
    assert plain.stderr.splitlines()[0][2] == ":"  # HH:MM:SS first


def test_run_without_its_microphone_waits_for_it(files):
    """A missing device is not an exit: `run` says it waits, retries, and stops cleanly."""
    d, model, _ = files
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "detector", "run", "--model", str(model),
                             "--device", "no-such-device-xyz"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        err = LineReader(proc.stderr)
        deadline = time.monotonic() + 30
        while not any("waiting for audio device 'no-such-device-xyz'" in l for l in err.all):
            assert proc.poll() is None, "".join(err.all)
            assert time.monotonic() < deadline, "".join(err.all)
            time.sleep(0.05)
        time.sleep(1.5)  # several retries
        assert proc.poll() is None, "it must keep waiting"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in "".join(err.all)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_a_realtime_replay_cleanly(files, tmp_path):
    d, model, _ = files
    long = write_tone_wav(tmp_path / "long.wav", [(0.5, 30.0, 1000.0)], seconds=30.0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "detector", "replay", str(long), "--model",
                             str(model), "--realtime"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        first = proc.stdout.readline()  # the start event arrives after ~1.5 s
        assert json.loads(first)["type"] == "start"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    end = json.loads(out.splitlines()[0])
    assert end["type"] == "end" and end["label"] == "siren"  # flushed on shutdown
    assert "SIGTERM received" in err and "Traceback" not in err


def test_analyze_is_delegated(tmp_path):
    result = cli("analyze", "--help")
    assert result.returncode == 0 and "analyze" in result.stdout


def test_devices_lists_or_explains():
    result = cli("devices")
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2)
    assert (result.stdout.strip() or result.stderr.strip())


class LineReader:
    """Collects a pipe's lines from a thread so the test can wait with a timeout."""

    def __init__(self, stream):
        import queue
        import threading

        self.lines: "queue.Queue[str]" = queue.Queue()
        self.all: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream):
        for line in stream:
            self.all.append(line)
            self.lines.put(line)

    def next(self, timeout: float) -> str:
        import queue

        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line within {timeout} s")


def test_run_detects_a_tone_from_a_real_microphone(files, pulse_mic):
    """`run` on real PortAudio capture (PulseAudio FIFO): a tone -> start/end on stdout,
    the --show-scores view on stderr, SIGTERM -> exit 0."""
    from onnx_models import tone_signal

    d, model, _ = files
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "detector", "run", "--model", str(model),
                             "--device", "pulse", "--show-scores"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        # the scores view prints one line per window once audio flows
        deadline = time.monotonic() + 20
        while not any("dBFS" in line for line in err.all):
            assert proc.poll() is None, "".join(err.all)
            assert time.monotonic() < deadline, "".join(err.all)
            time.sleep(0.05)
        pulse_mic.play(tone_signal([(0.0, 1.5, 1000.0)], 1.5))
        start = json.loads(out.next(timeout=15))
        end = json.loads(out.next(timeout=15))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "".join(err.all)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (start["type"], start["label"]) == ("start", "siren")
    assert (end["type"], end["label"]) == ("end", "siren")
    assert 1.0 < end["duration_s"] < 3.5
    assert any("siren" in line and "dBFS" in line for line in err.all)
    assert not any("Traceback" in line for line in err.all)


def test_replay_plot_writes_a_png_or_names_the_missing_extra(files, tmp_path):
    d, model, tone = files
    out = tmp_path / "scores.png"
    result = cli("replay", tone, "--model", model, "--plot", out)
    try:
        import detector.cli.plotting  # noqa: F401  (ANALYSIS's module; matplotlib inside)
        import matplotlib  # noqa: F401
    except ImportError:
        line = one_error_line(result) if result.returncode else ""
        assert "--plot needs the [analysis] extra" in line
        return
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(result.stdout.splitlines()) == 2  # the events are still printed


def test_replay_repeat_is_one_continuous_stream(files):
    d, model, tone = files  # 4 s file, tone 1.0-2.5 s
    result = cli("replay", tone, "--model", model, "--repeat", "3", "--stats")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in events] == ["start", "end"] * 3
    from datetime import datetime

    starts = [datetime.fromisoformat(e["start"].replace("Z", "+00:00")).timestamp()
              for e in events if e["type"] == "start"]
    assert [round(b - a, 3) for a, b in zip(starts, starts[1:])] == [4.0, 4.0]
    stats = [l for l in result.stderr.splitlines() if l.startswith("stats: ")]
    assert len(stats) == 1 and "12.0 s of audio" in stats[0] and "ms per second" in stats[0]
    # the tone rises out of silence three times: onset windows after each (at most 20 a
    # second for the span, which the rising frames stretch by about 0.1 s)
    onset = int(re.search(r"(\d+) windows were onset windows", stats[0]).group(1))
    assert 3 <= onset <= 3 * 22
    assert "must be >= 1" in one_error_line(cli("replay", tone, "--model", model,
                                                "--repeat", "0"))


def test_replay_events_carry_their_offset_in_the_file(files, tmp_path):
    """`offset_s`: seconds from the start of the file to the event's onset window, the
    same whatever the wall clock (fast or --realtime) and continuing over --repeat."""
    d, model, _ = files
    wav = write_tone_wav(tmp_path / "two.wav", [(1.0, 2.5, 1000.0), (6.0, 7.5, 1000.0)],
                         seconds=9.0)

    def starts(*extra):
        result = cli("replay", wav, "--model", model, *extra, timeout=120)
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        for start, end in zip(events[::2], events[1::2]):
            assert start["id"] == end["id"] and start["offset_s"] == end["offset_s"]
        return [e["offset_s"] for e in events if e["type"] == "start"]

    fast = starts()
    assert len(fast) == 2 and 1.0 < fast[0] < 2.0 and 6.0 < fast[1] < 7.0
    assert fast[1] - fast[0] == pytest.approx(5.0, abs=1e-6)  # sample-exact positions
    assert starts("--realtime") == fast
    repeated = starts("--repeat", "2")
    assert repeated[:2] == fast
    assert repeated[2:] == pytest.approx([x + 9.0 for x in fast], abs=1e-6)


def test_stats_peak_rss_is_never_below_start_or_end(files):
    """`--stats` reported a peak below the end RSS on every run (ru_maxrss lags the
    current RSS); the peak must be the real high-water mark."""
    import re

    d, model, tone = files
    for args in (("replay", tone, "--model", model, "--stats"), ("replay", "--stats")):
        result = cli(*args, timeout=120)
        assert result.returncode == 0, result.stderr
        line = next(l for l in result.stderr.splitlines() if l.startswith("stats: "))
        start, end, peak = map(float, re.search(
            r"RSS ([\d.]+) MB at start, ([\d.]+) MB at end, peak ([\d.]+) MB", line).groups())
        assert peak >= end and peak >= start, line


def test_stats_peak_rss_is_the_replays_own_not_its_parents(files):
    """Linux starts a child's ru_maxrss from its parent's RSS at the fork (and keeps it
    across exec): a replay started by a 400 MB process reported a peak of 400+ MB. The
    peak must be the replay's own."""
    import re

    d, model, tone = files
    parent = ("import subprocess, sys; held = bytearray(b'\\x01') * (400 << 20); "
              "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "sys.stdout.write(r.stderr); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", parent, sys.executable, "-m", "detector",
                             "replay", str(tone), "--model", str(model), "--stats"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("stats: "))
    start, end, peak = map(float, re.search(
        r"RSS ([\d.]+) MB at start, ([\d.]+) MB at end, peak ([\d.]+) MB", line).groups())
    assert end <= peak < 300, line
