"""PGD (Madry et al., "Towards deep learning models resistant to adversarial attacks", 2018),
L∞, with two named protocols: ``paper`` (seed 001: step ε/3, 5 iterations, no random start;
the default) and ``pepita`` (seed 000 §3.1: 40 iterations of step 0.1 from a random start)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Progress
from .base import ATTACKS, Attack, class_indices, resolve_preset

#: Named PGD protocols; ``alpha=None`` means ε/3. ``paper``: seed 001 (the default);
#: ``pepita``: seed 000 §3.1 (PGD-40, step 0.1, random start; its ε is 0.3 on MNIST).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(steps=5, alpha=None, random_start=False),
    "pepita": dict(steps=40, alpha=0.1, random_start=True),
}


@ATTACKS.register("pgd", help="PGD (Madry et al. 2018): iterated signed-gradient steps, L∞")
class PGD(Attack):
    """x_{t+1} = Π_{ε, [0,1]}(x_t + α·sign(∇ CE(f(x_t), y))), seed 001 eq. (5), SPEC §8.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: L∞ budget (pixels in [0, 1]).
        alpha: step size (pixels); ``None`` takes the preset's (``paper``: ε/3).
        steps: iterations; ``None`` takes the preset's (``paper``: 5).
        random_start: start from x + U(−ε, ε) (clamped to [0, 1]) drawn from the attack's
            seeded generator instead of from x; ``None`` takes the preset's.
        preset: ``"paper"`` (seed 001: 5 steps, α = ε/3, no random start; used when
            ``None``) or ``"pepita"`` (seed 000 §3.1: 40 steps, α = 0.1, random start; that
            protocol's ε is 0.3). Explicit ``alpha``/``steps``/``random_start`` win.
        grad: ``"exact"`` or ``"model"`` gradient source (SPEC §2).
        seed: seeds the random start.

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (argmax) or
    ``(N,)`` class ids. Cost: one forward + one backward per step.
    """

    name = "pgd"

    def __init__(
        self, model: nn.Module, eps: float, *, alpha: float | None = None,
        steps: int | None = None, random_start: bool | None = None,
        preset: str | None = None, grad: str = "exact", seed: int = 0,
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed)
        # alpha=None is a value of its own (ε/3), so only steps/random_start are resolved
        # by resolve_preset (which treats None as "not given") and alpha by hand.
        resolvable = {n: {k: v for k, v in p.items() if k != "alpha"} for n, p in
                      PRESETS.items()}
        v = resolve_preset(resolvable, preset, steps=steps, random_start=random_start)
        if alpha is None:
            alpha = PRESETS["paper" if preset is None else preset]["alpha"]
        if v["steps"] < 1:
            raise ValueError(f"steps must be >= 1, got {v['steps']}")
        self.preset = preset
        self.alpha = self.eps / 3 if alpha is None else float(alpha)
        self.steps = int(v["steps"])
        self.random_start = bool(v["random_start"])

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
