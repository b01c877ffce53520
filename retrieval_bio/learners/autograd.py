"""Backpropagation through autograd: BP and every layer-conversion rule (FA, uSF, frSF,
brSF), whose converted layers route the backward pass through their feedback matrices
(:mod:`retrieval_bio.rules`).

Modules may add terms of their own to the objective: any submodule with an
``auxiliary_loss()`` method (a front end's regulariser, a HaH block's layer-local loss,
seed 004) returns a scalar from its last training forward, or ``None``, and the step
minimises the objective plus their sum. A layer-local loss keeps its gradient in its own
block by computing on a detached block input.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .base import LEARNERS, Learner, StepContext


@LEARNERS.register("autograd", help="loss.backward(): BP and the layer rules fa, usf, frsf, brsf")
class Autograd(Learner):
    """forward (autocast when valid) -> ``objective`` -> ``ctx.backward(loss)``."""

    name = "autograd"

    def training_step(
        self, model: nn.Module, objective: nn.Module, images: torch.Tensor,
        labels: torch.Tensor, ctx: StepContext,
    ) -> float:
        with ctx.autocast():
            outputs = model(images)
            loss = objective(outputs.float(), labels)
        extra = auxiliary_losses(model)
        if extra is not None:
            loss = loss + extra.float()
        value = float(loss.detach())
        if math.isfinite(value):  # a NaN loss stops the run before any gradient is applied
            ctx.backward(loss)
        return value


def auxiliary_losses(model: nn.Module) -> torch.Tensor | None:
    """The sum of ``m.auxiliary_loss()`` over the submodules of ``model`` that define it and
    returned a tensor for the last forward; ``None`` when there is none."""
    terms = []
    for m in model.modules():
        fn = getattr(m, "auxiliary_loss", None)
        if callable(fn):
            term = fn()
            if term is not None:
                terms.append(term)
    return torch.stack([t.reshape(()) for t in terms]).sum() if terms else None
