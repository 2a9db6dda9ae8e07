"""Files the daemon writes are private, whatever the umask; files it trusts are not
writable by others.

Outside systemd (``UMask=0077`` in the unit) a login shell's umask 022 would make
the outbox (queued events) and the clips (recordings of the room) readable by
every local user. :func:`private_dir` and :func:`private_file` create them 0700 /
0600 and tighten an existing one the daemon owns. :func:`refuse_writable_by_others`
rejects a config or model file that any user could change (a config chooses the
model, broker and clip directory; a model decides what fires).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from detector.errors import DetectorError

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode & 0o077:
            os.chmod(path, current & mode)
            logger.info("made %s private (mode %03o -> %03o)", path, current, current & mode)
    except OSError as exc:  # not ours (a shared directory): say so, go on
        logger.warning("cannot make %s private (%s); other users may read it",
                       path, exc.strerror or exc)


def _guard_existing_dir(path: Path) -> None:
    """An existing directory others can write into (they could replace or delete the
    outbox or the clips): tightened when the daemon owns it, else one warning."""
    try:
        info = path.stat()
    except OSError:
        return
    current = stat.S_IMODE(info.st_mode)
    if not current & 0o022:
        return
    if current & stat.S_ISVTX or info.st_uid != os.geteuid():
        logger.warning("%s is writable by other users (mode %04o) and not this user's to "
                       "change; they could replace or delete what the daemon writes there: "
                       "give the daemon a directory of its own", path, current)
        return
    try:
        os.chmod(path, current & ~0o022)
    except OSError as exc:
        logger.warning("%s is writable by other users (mode %03o) and cannot be tightened "
                       "(%s); they could replace or delete what the daemon writes there",
                       path, current, exc.strerror or exc)
        return
    logger.warning("%s was writable by other users: made it writable by its owner only "
                   "(mode %03o -> %03o)", path, current, current & ~0o022)


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed; a directory created here is 0700, an
    existing one others can write into is tightened or warned about."""
    path = Path(path)
    if path.is_dir():
        _guard_existing_dir(path)
        return
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for created in missing:  # mkdir(parents=True) gives the parents the umask's mode
        _tighten(created, DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if absent, else remove group/other access."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        _tighten(path, FILE_MODE)
        return
    os.close(fd)
    _tighten(path, FILE_MODE)  # the umask can only remove bits; this is for odd ACL setups


def refuse_writable_by_others(path: Path, what: str, error: type[DetectorError]) -> None:
    """Raise ``error`` (one line) if ``path`` can be written by every user."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return  # the caller reports a missing file in its own words
    if mode & stat.S_IWOTH:
        raise error(f"{what} {path} is writable by every user (mode "
                    f"{stat.S_IMODE(mode):03o}), so anyone could change what the daemon does; "
                    f"run `chmod o-w {path}`")


_HELD: dict[str, list[int]] = {}  # lock path -> [fd, holders in this process]


def lock_file(path: Path, share_in_process: bool = True) -> tuple[str | None, bool]:
    """Take an exclusive lock on ``path`` (flock: released when the process ends, even by
    SIGKILL). Returns ``(key, True)`` when held (release it with :func:`unlock_file`),
    ``(owner pid, False)`` when someone else holds it, and ``(None, True)`` when the lock
    file cannot be used at all (then nothing is checked). With ``share_in_process``,
    holders in one process share the lock; without, each call is its own holder (flock
    locks an open file description), as two processes would be."""
    import fcntl

    key = str(path)
    if share_in_process and key in _HELD:
        _HELD[key][1] += 1
        return key, True
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        try:  # another user's lock file (a shared /tmp): a read-only descriptor locks too
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            logger.debug("lock %s not usable (%s)", path, exc.strerror or exc)
            return None, True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        return owner, False
    except OSError as exc:
        os.close(fd)
        logger.debug("lock %s not usable (%s)", path, exc.strerror or exc)
        return None, True
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:  # read-only descriptor: the lock holds, the pid is not written
        pass
    if not share_in_process:
        key = f"{key}#{fd}"
    _HELD[key] = [fd, 1]
    return key, True


def unlock_file(key: str | None) -> None:
    """Release what :func:`lock_file` took (the last holder in this process closes it)."""
    held = _HELD.get(key) if key else None
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor releases the lock


def runtime_dir() -> Path:
    """Where per-boot lock files go: systemd's RuntimeDirectory, the user's runtime
    directory, else the system's temporary directory."""
    import tempfile

    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = os.environ.get(var, "").split(":")[0]
        if value and os.path.isdir(value):
            return Path(value)
    return Path(tempfile.gettempdir())
