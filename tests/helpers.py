"""Plain helpers shared by tests (importable: pyproject puts tests/ on pytest's path)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder without its attack reports (other tests write theirs)."""
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("attack-*")))


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch's intra-op threads set to ``n`` within the block, restored after: tiny models
    run fastest on one thread, and do not fight other processes for the cores."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class CtrlCAt:
    """A step hook that sends this process a real SIGINT (what Ctrl-C sends) during the n-th
    optimiser step."""

    def __init__(self, n: int, sig: int = signal.SIGINT) -> None:
        self.n, self.calls, self.sig = n, 0, sig

    def __call__(self, model, opt) -> None:
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.sig)


class RunCalls:
    """Wraps ``retrieval_bio.train.train_run`` and ``retrieval_bio.workflows.attack_run``
    where the grid runners (sweep, tradeoff) look them up, recording which cells train (and
    whether they resume) and which are attacked; the cell named ``interrupt`` gets a real
    Ctrl-C at step ``at_step`` of its first, non-resumed training."""

    def __init__(self, monkeypatch, interrupt: str | None = None, at_step: int = 5) -> None:
        import retrieval_bio.train as train_module
        import retrieval_bio.workflows as workflows_module

        self.trained: list[tuple[str, bool]] = []
        self.attacked: list[str] = []
        real_train, real_attack = train_module.train_run, workflows_module.attack_run

        def train_run(cfg, *, resume=False, progress=None, step_hooks=()):
            name = Path(cfg.out).name
            self.trained.append((name, resume))
            hooks = [CtrlCAt(at_step)] if name == interrupt and not resume else []
            return real_train(cfg, resume=resume, progress=progress,
                              step_hooks=[*step_hooks, *hooks])

        def attack_run(run_dir, *args, **kwargs):
            self.attacked.append(Path(run_dir).name)
            return real_attack(run_dir, *args, **kwargs)

        monkeypatch.setattr(train_module, "train_run", train_run)
        monkeypatch.setattr(workflows_module, "attack_run", attack_run)
