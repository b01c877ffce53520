"""PGD (Madry et al., "Towards deep learning models resistant to adversarial attacks", 2018),
L∞ or L2, with three named protocols: ``paper`` (seed 001: step ε/3, 5 iterations, no random
start; the default), ``pepita`` (seed 000 §3.1: 40 iterations of step 0.1 from a random start)
and ``ep`` (seed 002: 20 iterations of step ε/8, no random start)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Progress
from .base import ATTACKS, Attack, resolve_preset

#: Named PGD protocols; ``alpha=None`` means ``alpha_fraction``·ε (default ε/3). ``paper``:
#: seed 001 (the default); ``pepita``: seed 000 §3.1 (PGD-40, step 0.1, random start; its ε
#: is 0.3 on MNIST); ``ep``: seed 002 §3.2 / ART's defaults as its runs set them (PGD-20,
#: step 2.5ε/20 = ε/8, no random start; ep.md §2.2).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(steps=5, alpha=None, random_start=False),
    "pepita": dict(steps=40, alpha=0.1, random_start=True),
    "ep": dict(steps=20, alpha=None, alpha_fraction=1 / 8, random_start=False),
}


@ATTACKS.register("pgd", help="PGD (Madry et al. 2018): iterated gradient steps, L∞ or L2")
class PGD(Attack):
    """x_{t+1} = Π_{ε, [0,1]}(x_t + α·sign(∇ CE(f(x_t), y))), seed 001 eq. (5), SPEC §8.

    With ``norm="l2"`` the step is normalised instead of signed, x_t + α·g/‖g‖₂ (g the
    gradient of one image over its C·H·W entries; a zero gradient gives no step), and Π
    projects onto the L2 ball (:meth:`Attack.project`).

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: budget (pixels in [0, 1]) in ``norm``.
        alpha: step size (pixels, in ``norm``); ``None`` takes the preset's (``paper``: ε/3).
        steps: iterations; ``None`` takes the preset's (``paper``: 5).
        random_start: start from a random point of the ε-ball (:meth:`Attack.random_init`:
            x + U(−ε, ε) for L∞, uniform in the L2 ball for L2; clamped to [0, 1]) drawn
            from the attack's seeded generator instead of from x; ``None`` takes the
            preset's.
        preset: ``"paper"`` (seed 001: 5 steps, α = ε/3, no random start; used when
            ``None``) or ``"pepita"`` (seed 000 §3.1: 40 steps, α = 0.1, random start; that
            protocol's ε is 0.3) or ``"ep"`` (seed 002: 20 steps, α = ε/8, no random
            start). Explicit ``alpha``/``steps``/``random_start`` win.
        grad: ``"exact"`` or ``"model"`` gradient source (SPEC §2).
        seed: seeds the random start.
        norm: ``"linf"`` (default) or ``"l2"``.

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (argmax) or
    ``(N,)`` class ids. Cost: one forward + one backward per step.
    """

    name = "pgd"

    def __init__(
        self, model: nn.Module, eps: float, *, alpha: float | None = None,
        steps: int | None = None, random_start: bool | None = None,
        preset: str | None = None, grad: str = "exact", seed: int = 0, norm: str = "linf",
        **options: Any,
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed, norm=norm, **options)
        # alpha=None is a value of its own (ε/3), so only steps/random_start are resolved
        # by resolve_preset (which treats None as "not given") and alpha by hand.
        resolvable = {n: {k: p[k] for k in ("steps", "random_start")} for n, p in
                      PRESETS.items()}
        v = resolve_preset(resolvable, preset, steps=steps, random_start=random_start)
        chosen = PRESETS["paper" if preset is None else preset]
        if alpha is None:
            alpha = chosen["alpha"]
        if v["steps"] < 1:
            raise ValueError(f"steps must be >= 1, got {v['steps']}")
        self.preset = preset
        self.alpha = (self.eps * chosen.get("alpha_fraction", 1 / 3) if alpha is None
                      else float(alpha))
        self.steps = int(v["steps"])
        self.random_start = bool(v["random_start"])

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        y = self.class_ids(labels)
        x_adv = self.random_init(images, generator) if self.random_start else images
        progress.start("PGD", self.steps)
        for _ in range(self.steps):
            _, g = self.input_grad(x_adv, lambda out, _x: F.cross_entropy(out, y))
            x_adv = self.project(x_adv + self.alpha * self.ascent_direction(g), images)
            progress.advance()
        progress.stop()
        return x_adv
