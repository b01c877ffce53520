"""PGD (Madry et al., "Towards deep learning models resistant to adversarial attacks", 2018),
L∞, with the step and iteration defaults of seed 001 (step ε/3, 5 iterations)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Progress
from .base import ATTACKS, Attack, class_indices


@ATTACKS.register("pgd", help="PGD (Madry et al. 2018): iterated signed-gradient steps, L∞")
class PGD(Attack):
    """x_{t+1} = Π_{ε, [0,1]}(x_t + α·sign(∇ CE(f(x_t), y))), seed 001 eq. (5), SPEC §8.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: L∞ budget (pixels in [0, 1]).
        alpha: step size; ``None`` means ε/3 (seed 001). PEPITA's protocol (seed 000 §3.1)
            is ``PGD(model, 0.3, alpha=0.1, steps=40)`` on MNIST.
        steps: iterations (default 5, seed 001).
        random_start: start from x + U(−ε, ε) (clamped to [0, 1]) drawn from the attack's
            seeded generator instead of from x.
        grad: ``"exact"`` or ``"model"`` gradient source (SPEC §2).
        seed: seeds the random start.

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (argmax) or
    ``(N,)`` class ids. Cost: one forward + one backward per step.
    """

    name = "pgd"

    def __init__(
        self, model: nn.Module, eps: float, *, alpha: float | None = None, steps: int = 5,
        random_start: bool = False, grad: str = "exact", seed: int = 0,
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.alpha = self.eps / 3 if alpha is None else float(alpha)
        self.steps = int(steps)
        self.random_start = random_start

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("PGD needs labels")
        y = class_indices(labels)
        x_adv = images
        if self.random_start:
            noise = torch.rand(images.shape, generator=generator, device=images.device,
                               dtype=images.dtype)
            x_adv = self.project(images + (2 * noise - 1) * self.eps, images)
        progress.start("PGD", self.steps)
        for _ in range(self.steps):
            _, g = self.input_grad(x_adv, lambda out, _x: F.cross_entropy(out, y))
            x_adv = self.project(x_adv + self.alpha * g.sign(), images)
            progress.advance()
        progress.stop()
        return x_adv
