"""Training that diverges without a NaN is stopped (or loudly warned about) with the epoch,
step and likely cause; the NaN message names a checkpoint only when one exists."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.datasets import TensorSplit
from retrieval_bio.runs import CHECKPOINT
from retrieval_bio.train import DivergenceError, NonFiniteLossError, Trainer


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g)
    return TensorSplit(x, nn.functional.one_hot(torch.arange(n) % 3, 3).float())


class _MSE(nn.Module):
    def forward(self, out, labels):
        return (out - labels).square().mean()


class _Ascend(nn.Module):
    """A loss that falls as the outputs grow: minimising it drives the weights up while the
    loss itself never becomes non-finite."""

    def forward(self, out, labels):
        return -out.mean()


def _trainer(objective, run_dir, lr, epochs=3, n=96, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 3))
    return Trainer(model, objective, _data(n), param_groups=[{"params": list(model.parameters()),
                   "lr": lr}], epochs=epochs, batch_size=16, run_dir=run_dir, **kw)


def test_growing_loss_is_stopped_with_epoch_step_and_cause(tmp_path):
    # Adam at lr 30 on a least-squares loss overshoots further each step: the loss grows by
    # orders of magnitude but stays finite in float32 for many steps.
    t = _trainer(_MSE(), tmp_path, lr=30.0, n=640)  # 40 steps an epoch
    with pytest.raises(DivergenceError) as info:
        t.fit()
    msg = str(info.value)
    assert not isinstance(info.value, NonFiniteLossError)
    assert "diverged at epoch" in msg and "step" in msg and "learning rate" in msg
    assert "no checkpoint was written" in msg  # it stopped inside epoch 1
    assert t.state.loss_ema > 100 * t.state.loss_reference


def test_healthy_run_is_not_flagged(tmp_path):
    t = _trainer(_MSE(), tmp_path, lr=1e-2, epochs=4)
    t.fit()
    assert t.state.epoch == 4


def test_exploding_weights_are_stopped_even_when_the_loss_falls(tmp_path):
    t = _trainer(_Ascend(), tmp_path, lr=1.0, epochs=5)
    with pytest.raises(DivergenceError, match=r"weights' norm grew .*-fold") as info:
        t.fit()
    assert t.weight_growth() > 100
    # it stopped at an epoch end, after the previous epoch's checkpoint, which it names
    if (tmp_path / CHECKPOINT).is_file():
        assert str(tmp_path / CHECKPOINT) in str(info.value)
    # the same run with the check off goes on (the check, not chance, stopped it)
    _trainer(_Ascend(), tmp_path / "off", lr=1.0, epochs=2, divergence_factor=0).fit()


def test_at_chance_with_grown_weights_is_warned_in_the_history(tmp_path):
    t = _trainer(_Ascend(), tmp_path, lr=0.3, epochs=2, divergence_factor=0,
                 validate=lambda m: {"val_accuracy": 0.34}, select_metric="val_accuracy",
                 chance_level=1 / 3)
    t.fit()
    warnings = [h.get("warning", "") for h in t.state.history]
    assert any("at chance level" in w and "diverged" in w for w in warnings), warnings
    healthy = _trainer(_MSE(), tmp_path / "ok", lr=1e-2, epochs=2, chance_level=1 / 3,
                       validate=lambda m: {"val_accuracy": 0.34}, select_metric="val_accuracy")
    healthy.fit()
    assert not any("warning" in h for h in healthy.state.history)  # weights did not grow


def test_nan_message_names_a_checkpoint_only_when_one_exists(tmp_path):
    class NanAt(_MSE):
        def __init__(self, n):
            super().__init__()
            self.n, self.calls = n, 0

        def forward(self, out, labels):
            self.calls += 1
            loss = super().forward(out, labels)
            return loss * float("nan") if self.calls == self.n else loss

    with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
        _trainer(NanAt(2), tmp_path / "a", lr=1e-2).fit()
    with pytest.raises(NonFiniteLossError, match=r"end of epoch 1\) is kept in .*checkpoint"):
        _trainer(NanAt(8), tmp_path / "b", lr=1e-2).fit()


def test_cli_reports_divergence_and_overflowing_rates(tmp_path, one_thread):
    runner = CliRunner()
    args = ["pretrain", "--backbone", "small-cnn", "--image-size", "8", "--epochs", "2",
            "--batch-size", "64", "--device", "cpu"]
    r = runner.invoke(app, [*args, "--lr-backbone", "100", "--lr-head", "100",
                            "--out", str(tmp_path / "div")])
    assert r.exit_code == 2 and "diverged" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*args, "--lr-head", "1e400", "--out", str(tmp_path / "inf")])
    assert r.exit_code == 2 and "lr_head must be a finite number" in r.output
    assert not (tmp_path / "inf").exists()
