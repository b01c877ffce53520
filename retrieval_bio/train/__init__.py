"""The one shared trainer and the run pipeline built on it."""

from .devices import resolve_device, seed_everything
from .pipeline import (
    RunResult,
    build_model,
    load_init,
    load_run,
    load_splits,
    train_run,
)
from .trainer import NonFiniteLossError, Trainer, TrainerState

__all__ = [
    "NonFiniteLossError", "RunResult", "Trainer", "TrainerState", "build_model",
    "load_init",
    "load_run", "load_splits", "resolve_device", "seed_everything", "train_run",
]
