"""The per-cell lock (``OUT/<cell>/.sweep.lock``): two processes (two sweeps, or a
duplicate cluster job) never train or attack one cell's folder at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".sweep.lock"


class CellBusy(RuntimeError):
    """Another process holds the cell's lock: it is training or attacking that folder."""


@contextlib.contextmanager
def cell_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.sweep.lock`` (an advisory ``flock``, released by the OS when the
    process dies, so a killed job never leaves a stale lock).

    Raises:
        CellBusy: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CellBusy(f"another process runs this cell now (it holds "
                           f"{run_dir / LOCK_FILE})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds the cell's lock (tested without creating anything)."""
    try:
        import fcntl

        with open(run_dir / LOCK_FILE) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except (ImportError, OSError):
        pass
    return False
