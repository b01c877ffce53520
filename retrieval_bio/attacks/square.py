"""Square attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), L∞, untargeted, margin loss.

Gradient-free: it only queries the model's outputs, so it is the masking check of SPEC §8 —
a learning rule whose robustness holds against gradient attacks but not against Square is
masking gradients rather than being robust.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..progress import Progress
from .base import ATTACKS, Attack, class_indices

# Iteration thresholds (on a 10,000-query scale) at which the square's area fraction p halves.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(step: int, n_queries: int, p_init: float = 0.8) -> float:
    """Fraction p of the image covered by the square at 0-based ``step`` of ``n_queries``.

    The paper's piecewise-constant schedule, defined for 10,000 queries and rescaled to
    ``n_queries``: p = p_init, halved after iterations 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000.
    """
    it = int(step / n_queries * 10000)
    return p_init / 2 ** sum(it > t for t in _P_HALVINGS)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(N,)`` z_y − max_{j≠y} z_j; ≤ 0 means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


@ATTACKS.register("square", help="Square (Andriushchenko et al. 2020): gradient-free, L∞")
class Square(Attack):
    """L∞ Square attack: random search over square-shaped updates at the corners of the ε-box.

    Start: x + ε·(random ±1 vertical stripes, one per column and channel). Each iteration
    draws, per still-correctly-classified image, a square of side ``round(sqrt(p·H·W))``
    (p from :func:`p_schedule`) at a random position and sets it to x ± ε (one random sign
    per channel); the candidate is kept when it lowers the margin loss. Images already
    misclassified are not queried further. Every random choice comes from the attack's
    seeded generator.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: L∞ budget (pixels in [0, 1]).
        n_queries: iterations (one batched forward each, plus one for the start).
        p_init: initial square area fraction (paper: 0.8 for L∞).
        seed: seeds the generator.
        grad: accepted for a uniform interface with the gradient attacks and ignored: no
            gradient is ever computed (``n_grad_calls`` stays 0).

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (argmax) or
    ``(N,)`` class ids.
    """

    name = "square"

    def __init__(
        self, model: nn.Module, eps: float, *, n_queries: int = 1000, p_init: float = 0.8,
        seed: int = 0, grad: str = "model",
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed)
        if n_queries < 0:
            raise ValueError(f"n_queries must be >= 0, got {n_queries}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)

    def _random_sign(self, shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor):
        r = torch.randint(0, 2, shape, generator=gen, device=like.device)
        return (2 * r - 1).to(like.dtype)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("Square needs labels")
        if self.eps == 0:
            return images
        y = class_indices(labels)
        n, c, h, w = images.shape
        stripes = self._random_sign((n, c, 1, w), generator, images)
        x_best = self.project(images + self.eps * stripes, images)
        margin_best = margin(self.predict(x_best), y)
        rows = torch.arange(h, device=images.device)
        cols = torch.arange(w, device=images.device)
        progress.start("Square", self.n_queries)
        for i in range(self.n_queries):
            active = (margin_best > 0).nonzero().flatten()
            if active.numel() == 0:
                break
            m = active.numel()
            p = p_schedule(i, self.n_queries, self.p_init)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            top = torch.randint(0, h - s + 1, (m,), generator=generator, device=images.device)
            left = torch.randint(0, w - s + 1, (m,), generator=generator, device=images.device)
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)  # (m, H)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)  # (m, W)
            window = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (m, 1, H, W)
            colour = self._random_sign((m, c, 1, 1), generator, images)
            x = images[active]
            candidate = torch.where(window, x + self.eps * colour, x_best[active])
            candidate = self.project(candidate, x)
            new_margin = margin(self.predict(candidate), y[active])
            better = new_margin < margin_best[active]
            idx = active[better]
            x_best[idx] = candidate[better]
            margin_best[idx] = new_margin[better]
            progress.advance()
        progress.stop()
        return x_best
