"""FGSM (Goodfellow et al., "Explaining and harnessing adversarial examples", 2015), L∞, and
its L2 counterpart (the fast gradient method: one step of ε along the normalised gradient)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Progress
from .base import ATTACKS, Attack


@ATTACKS.register("fgsm", help="FGSM (Goodfellow et al. 2015): one gradient step, L∞ or L2")
class FGSM(Attack):
    """x' = clip_[0,1](x + ε·sign(∇_x CE(f(x), y))), SPEC §8; with ``norm="l2"``
    x' = clip_[0,1](x + ε·g/‖g‖₂), g = ∇_x CE per image (a zero gradient: no step).

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: budget (pixels in [0, 1]) in ``norm``.
        grad: ``"exact"`` or ``"model"`` gradient source (SPEC §2).
        seed: unused (deterministic), kept for a uniform interface.
        norm: ``"linf"`` (default) or ``"l2"`` (over the C·H·W entries of an image).

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (the argmax is
    the class) or ``(N,)`` class ids. Cost: one forward + one backward.
    """

    name = "fgsm"

    def __init__(
        self, model: nn.Module, eps: float, *, grad: str = "exact", seed: int = 0,
        norm: str = "linf", **options: Any,
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed, norm=norm, **options)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        y = self.class_ids(labels)
        _, g = self.input_grad(images, lambda out, _x: F.cross_entropy(out, y))
        return self.project(images + self.eps * self.ascent_direction(g), images)
