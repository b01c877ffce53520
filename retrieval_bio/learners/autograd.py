"""Backpropagation through autograd: BP and every layer-conversion rule (FA, uSF, frSF,
brSF), whose converted layers route the backward pass through their feedback matrices
(:mod:`retrieval_bio.rules`)."""

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
        value = float(loss.detach())
        if math.isfinite(value):  # a NaN loss stops the run before any gradient is applied
            ctx.backward(loss)
        return value
