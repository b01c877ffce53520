"""The one shared trainer and the run pipeline built on it."""

from .devices import resolve_device, seed_everything
from .pipeline import (
    LoadedRun,
    RunResult,
    build_model,
    load_init,
    load_run,
    load_splits,
    open_run,
    train_run,
)
from .trainer import DivergenceError, NonFiniteLossError, Trainer, TrainerState

__all__ = [
    "DivergenceError", "LoadedRun", "NonFiniteLossError", "RunResult", "Trainer",
    "TrainerState", "build_model", "load_init", "load_run", "load_splits", "open_run",
    "resolve_device", "seed_everything", "train_run",
]
