"""Fixtures shared across the test tree: tiny trained runs and a one-thread setting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import torch_threads

from retrieval_bio.config import RunConfig
from retrieval_bio.train import train_run


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(task, rule) -> run folder``: a 1-epoch small-cnn fine-tune on 8-px digits,
    trained once per test session and shared by every module that asks for it."""
    base = tmp_path_factory.mktemp("tiny-runs")

    def make(task: str, rule: str) -> Path:
        out = base / f"{task}-{rule}"
        if not (out / "best.pt").is_file() or "test_accuracy" not in (out / "metrics.json") \
                .read_text() and "map@k" not in (out / "metrics.json").read_text():
            shutil.rmtree(out, ignore_errors=True)
            train_run(RunConfig(stage="finetune", task=task, rule=rule, backbone="small-cnn",
                                dataset="digits", image_size=8, bits=16, epochs=1,
                                batch_size=64, lr_backbone=3e-3, lr_head=3e-3, device="cpu",
                                out=str(out)))
        return out

    return make
