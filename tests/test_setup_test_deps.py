"""scripts/setup-test-deps.sh on a machine whose apt is busy: it waits for the lock,
bounded, and installs what the tests and the docs use. apt-get, dpkg and sudo are
replaced by stubs on PATH, so the script's own logic runs for real without touching
the machine's packages."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "scripts" / "setup-test-deps.sh"


def _stubs(tmp_path: Path, lock_failures: int) -> tuple[Path, Path]:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    stubs = {
        # every package but mosquitto-clients is installed already
        "dpkg": '[ "$2" != mosquitto-clients ]',
        "sudo": 'exec "$@"',
        "sleep": "exec /bin/sleep 0.05",
        "apt-get": f"""
echo "$*" >> {calls}
n=$(grep -c . {calls})
if [ "$n" -le {lock_failures} ]; then
  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 42" >&2
  exit 100
fi""",
    }
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    return bin_, calls


def _run(bin_: Path, wait: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_}:/usr/bin:/bin", "APT_LOCK_WAIT_SECONDS": wait}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60)


def test_waits_for_a_held_apt_lock_and_installs_the_clients(tmp_path):
    bin_, calls = _stubs(tmp_path, lock_failures=2)
    proc = _run(bin_, "60")
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 4  # update refused twice, then update and install
    assert all("DPkg::Lock::Timeout=" in line for line in lines)
    assert lines[2].endswith("update -qq")
    assert lines[3].split()[-1] == "mosquitto-clients"
    assert "apt is busy" in proc.stderr


def test_gives_up_after_the_bounded_wait_with_one_clear_line(tmp_path):
    bin_, calls = _stubs(tmp_path, lock_failures=10**6)
    proc = _run(bin_, "1")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "still held after 1s" in last and "Traceback" not in proc.stderr
    assert "install" not in calls.read_text()
