"""Plain helpers shared by tests (importable: pyproject puts tests/ on pytest's path)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder without its attack reports (other tests write theirs)."""
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("attack-*")))


class CtrlCAt:
    """A step hook that sends this process a real SIGINT (what Ctrl-C sends) during the n-th
    optimiser step."""

    def __init__(self, n: int, sig: int = signal.SIGINT) -> None:
        self.n, self.calls, self.sig = n, 0, sig

    def __call__(self, model, opt) -> None:
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.sig)
