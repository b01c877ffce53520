"""The learner contract: how one batch becomes parameter gradients.

The trainer (:class:`retrieval_bio.train.Trainer`) owns the loop, the optimiser and its
schedule, the step hooks, checkpoints and resume; a :class:`Learner` owns only the step's
mathematics. Each step the trainer zeroes the gradients, calls
``learner.training_step(model, objective, images, labels, ctx)``, checks the returned loss,
then steps the optimiser. A learner writes ``p.grad`` for the parameters it trains, either
through autograd (``ctx.backward(loss)``, the only place mixed-precision scaling touches)
or directly (PEPITA's ΔW, EP's estimate, Krotov–Hopfield's update).

A learner is an ``nn.Module`` so that its own state (PEPITA's fixed feedback matrix F) is a
persistent buffer: saved in every checkpoint and restored on resume, never a parameter of
the model and never seen by the optimiser.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..registry import Registry

#: name -> learner class. ``rule`` values of a run are the layer rules of
#: :mod:`retrieval_bio.rules` (all trained by ``autograd``) plus these names.
LEARNERS: Registry[type[Learner]] = Registry("learner")


@dataclass
class StepContext:
    """What the trainer lends a learner for one step.

    Attributes:
        device: where model and batch live.
        amp: float16 autocast is on for this learner (CUDA, ``amp=True`` and a learner that
            declares ``uses_amp``).
        scaler: the trainer's gradient scaler; only :meth:`backward` uses it.
        seed: the run's seed (learners derive per-step seeds from it and ``global_step``).
        epoch: epochs completed before this step.
        global_step: steps completed before this step.
    """

    device: torch.device
    amp: bool
    scaler: torch.amp.GradScaler
    seed: int = 0
    epoch: int = 0
    global_step: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass when it is valid, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through the gradient scaler (a no-op scaling without AMP)."""
        self.scaler.scale(loss).backward()


class Learner(nn.Module):
    """Base class of a learning procedure.

    Class attributes a subclass sets:
        uses_amp: mixed precision may apply (``False`` for gradients that are not gradients
            of a loss, such as PEPITA's ΔW: scaling them is meaningless).
        has_loss: the step returns a loss to log (``False`` for unsupervised local rules).
        supervised: the run validates and selects an epoch on a task metric; ``False``
            (an unsupervised stage such as Krotov–Hopfield's, whose head is trained later)
            keeps the last epoch, skips validation and the test evaluation, and records
            :meth:`finish`'s metrics instead.
        syncs_gradients: under data parallelism the step itself makes ``.grad`` equal on
            every rank (Krotov–Hopfield sums its raw update over ranks before normalising
            it); ``False``: the trainer averages ``.grad`` over ranks after the step.
    """

    name = "learner"
    uses_amp = True
    has_loss = True
    supervised = True
    syncs_gradients = False

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        """Raise :class:`~retrieval_bio.config.ConfigError` when this learner cannot train
        ``model`` (the message names the model, the learner and what would work)."""

    def prepare(self, model: nn.Module, objective: nn.Module) -> None:
        """Called once before training (and before a resume loads the state): build state
        that depends on the model's shape (e.g. F of shape (d, C))."""
        self.check_model(model)

    def training_step(
        self, model: nn.Module, objective: nn.Module, images: torch.Tensor,
        labels: torch.Tensor, ctx: StepContext,
    ) -> float | None:
        """Write the gradients of one batch into ``.grad``; return the loss to log.

        Args:
            model: in train mode; images ``(N, 3, H, W)`` in [0, 1] -> outputs.
            objective: ``objective(outputs, labels) -> scalar``.
            images: the batch on ``ctx.device``.
            labels: ``(N, C)`` multi-hot labels on ``ctx.device``.
        """
        raise NotImplementedError

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Extra entries for each epoch's history (e.g. convergence checks); none here."""
        return {}

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Called once after the last epoch on the kept weights, which it may change (a
        pruning step); returns entries for the run's metrics (``"warnings"``: texts to
        show). Nothing here."""
        return {}

    def describe(self) -> dict[str, object]:
        """The learner's settings, for the run's metrics."""
        return {"learner": self.name}
