"""One writer per run directory: an exclusive lock file, and a run's status (diverged or not).

A command that writes into a run directory (``train``, ``analyze``) holds ``RUN_DIR/.revinterp.lock`` while it
writes. The lock file is created atomically (``O_CREAT | O_EXCL``: of two writers started at the same instant
exactly one creates it) and holds the writer's pid and host as JSON; it is removed when the writer is done, also
on an error or Ctrl-C. A second writer gets :class:`RunLockedError` naming the holder. A lock left by a writer
that died without cleaning up (``kill -9``, a crash of the machine) is *stale*: when its pid is no longer running
on this host the error says so and gives the command that clears it; it is never removed silently (the pid could
belong to a writer on another machine sharing the directory, or have been reused).

The lock is re-entrant within one thread (``analyze`` may call a function that takes it again), never across
threads or processes. Its record says what the writer is doing (``purpose``): readers (``load_run``: eval,
analyze) refuse a directory while it is being *trained* (its model files are not complete), not while another
purpose (e.g. ``"analyze"``, which leaves the model files alone) holds it.

Example:
    >>> from revinterp.rundir import run_lock                      # doctest: +SKIP
    >>> with run_lock("runs/default-seed0", purpose="analyze"):    # doctest: +SKIP
    ...     write_analyses("runs/default-seed0")
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from revinterp.io import json_text

LOCK_FILE = ".revinterp.lock"

_held: dict[Path, list] = {}  # resolved lock path -> [owning thread id, depth], for this process
_held_guard = threading.Lock()


class RunLockedError(FileExistsError):
    """The run directory is being written by another command (or a dead one left its lock behind).

    A ``FileExistsError`` (its lock file exists), so callers that refuse an existing run directory refuse this too.
    """


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def lock_holder(run_dir: str | Path) -> dict | None:
    """The lock file's record (``pid``, ``host``, ``started``...), ``{}`` if unreadable, None when unlocked."""
    path = lock_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def holder_is_stale(record: dict | None) -> bool:
    """True for a lock written on this host by a process that is no longer running."""
    if not record:
        return False
    pid, host = record.get("pid"), record.get("host")
    return isinstance(pid, int) and host == socket.gethostname() and not pid_alive(pid)


def describe_holder(record: dict) -> str:
    """``"pid 123 on this host (train), since 2025-01-01T10:00:00+0000 (revinterp train ...)"``."""
    if not record:
        return "an unknown writer (the lock file is empty or unreadable: being written, or corrupt)"
    if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        who = f"another thread of this process (pid {os.getpid()})"
    else:
        where = "this host" if record.get("host") == socket.gethostname() else f"host {record.get('host')!r}"
        who = f"pid {record.get('pid')} on {where}"
    purpose = f" ({record['purpose']})" if isinstance(record.get("purpose"), str) else ""
    started = f", since {record['started']}" if isinstance(record.get("started"), str) else ""
    command = f" ({record['command']})" if isinstance(record.get("command"), str) and record["command"] else ""
    return f"{who}{purpose}{started}{command}"


def locked_error(run_dir: Path, record: dict | None) -> RunLockedError:
    path = lock_path(run_dir)
    clear = f"rm {shlex.quote(str(path))}"
    if holder_is_stale(record):
        return RunLockedError(
            f"run directory {run_dir} has a stale lock: it was taken by {describe_holder(record)}, which is no "
            f"longer running (killed or crashed while writing). If no other command is writing {run_dir}, clear "
            f"it with: {clear}  (then add --resume to continue a training run)"
        )
    return RunLockedError(
        f"run directory {run_dir} is being written by {describe_holder(record or {})} (lock file {path}); wait for "
        f"it to finish, or write to another directory. If that writer is gone, clear the lock with: {clear}"
    )


def _record(purpose: str) -> dict:
    import sys

    return {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500] if sys.argv else ""}


def acquire(run_dir: str | Path, purpose: str = "write") -> Path:
    """Take the lock of an existing run directory (see :func:`run_lock`); returns the lock file's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; expected a directory to lock")
    path = lock_path(run_dir)
    key = path.resolve()
    me = threading.get_ident()
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            if held[0] == me:
                held[1] += 1
                return path
            holder = lock_holder(run_dir) or {"pid": os.getpid(), "host": socket.gethostname()}
            raise RunLockedError(f"run directory {run_dir} is being written by {describe_holder(holder)}; "
                                 "expected one writer at a time")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise locked_error(run_dir, lock_holder(run_dir)) from None
        try:
            os.write(fd, json_text(_record(purpose), indent=None).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _held[key] = [me, 1]
    return path


def release(run_dir: str | Path) -> None:
    """Give back a lock taken by :func:`acquire` in this thread (the file goes with the last release)."""
    path = lock_path(run_dir)
    key = path.resolve()
    with _held_guard:
        held = _held.get(key)
        if held is None or held[0] != threading.get_ident():
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _held[key]
        record = lock_holder(run_dir)
        if record is None or record.get("pid") == os.getpid():  # never remove a lock someone else took since
            path.unlink(missing_ok=True)


def holds_lock(run_dir: str | Path) -> bool:
    """Whether the calling thread holds the lock of ``run_dir``."""
    held = _held.get(lock_path(run_dir).resolve())
    return held is not None and held[0] == threading.get_ident()


@contextmanager
def run_lock(run_dir: str | Path, purpose: str = "write") -> Iterator[Path]:
    """Hold the exclusive write lock of the existing directory ``run_dir`` for the ``with`` block.

    Args:
        run_dir: an existing directory (``FileNotFoundError`` otherwise).
        purpose: what the holder does, recorded in the lock and shown to whoever is refused: ``"train"`` (readers
            are refused too: the model files are incomplete), ``"analyze"``, ...

    Raises :class:`RunLockedError` naming the holder when another writer (thread, process or machine) holds it,
    or with the command that clears a stale lock. Re-entrant within one thread (the first purpose is kept). Yields
    the lock file's path.
    """
    path = acquire(run_dir, purpose)
    try:
        yield path
    finally:
        release(run_dir)


def check_not_being_written(run_dir: str | Path) -> None:
    """Refuse to read a run directory while another live writer trains it (its model files are incomplete).

    A stale lock (its writer died) does not stop a reader: what the run wrote is complete, file by file; nor does
    a lock taken for another purpose than ``"train"`` (an analysis leaves the model files alone). A lock record
    without a purpose, or an unreadable one, does.
    """
    run_dir = Path(run_dir)
    record = lock_holder(run_dir)
    if record is None or holds_lock(run_dir) or holder_is_stale(record):
        return
    if record.get("purpose") not in (None, "train"):  # a lock of an older revinterp has no purpose
        return
    raise RunLockedError(
        f"run directory {run_dir} is being written by {describe_holder(record)} (lock file {lock_path(run_dir)}); "
        "wait for that command to finish before reading it. If that writer is gone, clear the lock with: "
        f"rm {shlex.quote(str(lock_path(run_dir)))}"
    )
