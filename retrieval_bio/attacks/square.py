"""Square attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), L∞ and L2, untargeted, margin loss.

Gradient-free: it only queries the model's outputs, so it is the masking check of SPEC §8 —
a learning rule whose robustness holds against gradient attacks but not against Square is
masking gradients rather than being robust.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..progress import Progress
from .base import ATTACKS, EnsembleAttack, l2_norms

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


def _rectangles(a: int, b: int) -> torch.Tensor:
    """``(a, b)`` concentric rectangles around (a//2, b//2): the entry at Chebyshev distance
    d from the centre is Σ_{k=d}^{K−1} 1/(k+1)², K = max(a//2, b//2) + 1; unit L2 norm (all
    zeros when a or b is 0). The building block of the L2 Square's update (the paper's
    Fig. 2 / the reference's ``eta_rectangles``)."""
    if a == 0 or b == 0:
        return torch.zeros(a, b, dtype=torch.float64)
    ci, cj = a // 2, b // 2
    k_max = max(ci, cj) + 1
    d = torch.maximum((torch.arange(a)[:, None] - ci).abs(), (torch.arange(b)[None] - cj).abs())
    weights = 1.0 / torch.arange(1, k_max + 1, dtype=torch.float64) ** 2  # 1/(k+1)², k < K
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{k >= d} 1/(k+1)²
    out = tail[d]
    return out / out.norm()


def square_pattern(s: int) -> torch.Tensor:
    """The L2 Square's ``(s, s)`` update pattern: the top ⌊s/2⌋ rows a positive, the rest a
    negative block of concentric rectangles (:func:`_rectangles`), unit L2 norm, float64.
    The attack transposes it at random (one coin per image and draw)."""
    out = torch.cat([_rectangles(s // 2, s), -_rectangles(s - s // 2, s)])
    return out / out.norm()


@ATTACKS.register("square", help="Square (Andriushchenko et al. 2020): gradient-free, L∞ or L2")
class Square(EnsembleAttack):
    """Square attack: random search over square-shaped updates, margin loss, untargeted.

    **L∞** (the paper's Algorithm 2). Start: x + ε·(random ±1 vertical stripes, one per column
    and channel). Each iteration draws, per still-correctly-classified image, a square of side
    ``round(sqrt(p·H·W))`` (p from :func:`p_schedule`) at a random position and sets it to
    x ± ε (one random sign per channel); the candidate is kept when it lowers the margin.

    **L2** (the paper's Algorithm 3 and §3.2). Start: a grid of ⌊H/5⌋-pixel tiles, each the
    :func:`square_pattern` with a random sign per channel (and a random transposition),
    scaled so that ‖δ‖₂ = ε over the image's C·H·W entries. Each iteration draws two windows
    W1, W2 of side s = max(round(sqrt(p·H·W)), 3), made odd, per image; per channel the
    perturbation in W1 becomes the normalised sum of a new signed pattern and the normalised
    old content of W1, the perturbation in W2 is set to 0, and the W1 content is scaled so
    that the budget freed in W1 ∪ W2 (plus any slack ε² − ‖δ‖²) is reused:
    ‖δ_W1,c‖² = (ε² − ‖δ‖²)⁺/C + ‖δ_{W1∪W2}‖². The whole δ is then rescaled to ‖δ‖₂ = ε and
    the image clamped to [0, 1]; kept when it lowers the margin.

    Both: images already misclassified are not queried again. Every random choice comes from
    the attack's seeded generator and is drawn for all N images of the call at once (then
    used only for the images still attacked), so an image's perturbation does not depend on
    when the other images of its batch were broken, nor on which of them are attacked at all
    (:meth:`run`'s ``active``; how :class:`~retrieval_bio.attacks.AutoAttack` runs it).

    Differences from the reference implementation (``fra31/auto-attack``'s ``square.py``): it
    draws one window position (and one transposition) per iteration for the whole batch, we
    draw them per image, as the paper's algorithm states; the L∞ version does not resample a
    square whose candidate would leave the image unchanged, we just draw the next one.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: budget (pixels in [0, 1]) in ``norm``.
        n_queries: iterations (one batched forward each, plus one for the start).
        p_init: initial square area fraction (paper: 0.8; AutoAttack uses 0.8 for both norms).
        seed: seeds the generator.
        grad: accepted for a uniform interface with the gradient attacks and ignored: no
            gradient is ever computed (``n_grad_calls`` stays 0).
        norm: ``"linf"`` (default) or ``"l2"`` (over the C·H·W entries of an image).

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (argmax) or
    ``(N,)`` class ids.
    """

    uses_gradients = False
    name = "square"

    def __init__(
        self, model: nn.Module, eps: float, *, n_queries: int = 1000, p_init: float = 0.8,
        seed: int = 0, grad: str = "model", norm: str = "linf", **options: Any,
    ) -> None:
        # options: the base's bpda / eot, which a gradient-free attack refuses
        super().__init__(model, eps, grad=grad, seed=seed, norm=norm, **options)
        if n_queries < 0:
            raise ValueError(f"n_queries must be >= 0, got {n_queries}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)

    def run(
        self, images: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
        progress: Progress, active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attack on the images ``active`` selects (``(N,)`` bool; default all).

        Args:
            images: clean images ``(N, C, H, W)`` in [0, 1], on ``self.device``.
            y: class ids ``(N,)``.
            active: the images to attack; the others are returned unchanged and never
                queried. Random draws are made for all N images whatever ``active`` says.

        Returns:
            ``(adv, fooled)``: adversarial images ``(N, C, H, W)`` and ``(N,)`` bool, true for
            the active images whose returned image the attack's own forward found
            misclassified (margin ≤ 0).
        """
        n = images.shape[0]
        active = (torch.ones(n, dtype=torch.bool, device=images.device) if active is None
                  else active.to(images.device))
        if self.eps == 0 or not active.any():
            return images, torch.zeros_like(active)
        init = self._l2_init if self.norm == "l2" else self._linf_init
        step = self._l2_step if self.norm == "l2" else self._linf_step
        x_best = init(images, generator)
        x_best = torch.where(active[:, None, None, None], x_best, images)
        # inactive images get margin −inf: "done", never queried
        margin_best = torch.full((n,), float("-inf"), dtype=images.dtype, device=images.device)
        idx = active.nonzero().flatten()
        margin_best[idx] = margin(self.predict(x_best[idx]), y[idx])
        progress.start("Square", self.n_queries)
        for i in range(self.n_queries):
            todo = margin_best > 0
            if not todo.any():
                break
            idx = todo.nonzero().flatten()
            candidate = step(images, x_best, p_schedule(i, self.n_queries, self.p_init),
                             generator, todo)
            candidate = self.project(candidate, images[idx])
            new_margin = margin(self.predict(candidate), y[idx])
            better = new_margin < margin_best[idx]
            x_best[idx[better]] = candidate[better]
            margin_best[idx[better]] = new_margin[better]
            progress.advance()
        progress.stop()
        return x_best, active & (margin_best <= 0)

    # -- L∞ -----------------------------------------------------------------------------

    def _random_sign(self, shape: tuple[int, ...], gen: torch.Generator,
                     like: torch.Tensor) -> torch.Tensor:
        r = torch.randint(0, 2, shape, generator=gen, device=like.device)
        return (2 * r - 1).to(like.dtype)

    def _linf_init(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, _, w = images.shape
        stripes = self._random_sign((n, c, 1, w), gen, images)
        return self.project(images + self.eps * stripes, images)

    def _linf_step(
        self, images: torch.Tensor, x_best: torch.Tensor, p: float, gen: torch.Generator,
        todo: torch.Tensor,
    ) -> torch.Tensor:
        """Candidates ``(m, C, H, W)`` for the m images of ``todo`` (draws for all N)."""
        n, c, h, w = images.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
        top, left = self._positions(n, h, w, s, gen, images.device)
        colour = self._random_sign((n, c, 1, 1), gen, images)
        idx = todo.nonzero().flatten()
        window = self._window(top[idx], left[idx], s, h, w)  # (m, 1, H, W)
        x = images[idx]
        return torch.where(window, x + self.eps * colour[idx], x_best[idx])

    # -- L2 -----------------------------------------------------------------------------

    def _l2_init(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The paper's L2 start: tiles of side ⌊H/5⌋ (at least 1) centred in the image, each
        a :func:`square_pattern` (randomly transposed) with a random sign per channel, then
        ‖δ‖₂ = ε."""
        n, c, h, w = images.shape
        s = max(h // 5, 1)
        rows, cols = h // s, w // s
        pattern = square_pattern(s).to(images)
        flip = torch.randint(0, 2, (n, rows, cols), generator=gen, device=images.device)
        tiles = torch.where(flip.bool()[..., None, None], pattern.T, pattern)  # (n, r, q, s, s)
        signs = self._random_sign((n, c, rows, cols), gen, images)
        grid = tiles[:, None] * signs[..., None, None]  # (n, c, r, q, s, s)
        grid = grid.permute(0, 1, 2, 4, 3, 5).reshape(n, c, rows * s, cols * s)
        delta = torch.zeros_like(images)
        r0, c0 = (h - rows * s) // 2, (w - cols * s) // 2
        delta[:, :, r0:r0 + rows * s, c0:c0 + cols * s] = grid
        return self._on_sphere(images, delta)

    def _l2_step(
        self, images: torch.Tensor, x_best: torch.Tensor, p: float, gen: torch.Generator,
        todo: torch.Tensor,
    ) -> torch.Tensor:
        """Candidates ``(m, C, H, W)`` for the m images of ``todo`` (draws for all N)."""
        n, c, h, w = images.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = min(s + 1 - s % 2, h, w)  # odd, as the paper's windows, but never past the image
        top1, left1 = self._positions(n, h, w, s, gen, images.device)
        top2, left2 = self._positions(n, h, w, s, gen, images.device)
        flip = torch.randint(0, 2, (n,), generator=gen, device=images.device).bool()
        signs = self._random_sign((n, c, 1, 1), gen, images)
        idx = todo.nonzero().flatten()
        m = idx.numel()
        x = images[idx]
        delta = x_best[idx] - x
        w1 = self._window(top1[idx], left1[idx], s, h, w).expand(m, c, h, w)
        w2 = self._window(top2[idx], left2[idx], s, h, w).expand(m, c, h, w)
        old = delta[w1].view(m, c, s, s)  # W1's content, row-major like the window
        old_norm = old.flatten(2).norm(dim=2)[..., None, None]  # per channel
        image_norm = l2_norms(delta)[:, None, None, None]
        freed = l2_norms(delta * (w1 | w2))[:, None, None, None]
        pattern = square_pattern(s).to(images)
        new = torch.where(flip[idx, None, None, None], pattern.T, pattern) * signs[idx]
        new = new + old / (old_norm + 1e-12)
        new_norm = new.flatten(2).norm(dim=2)[..., None, None]
        budget = ((self.eps ** 2 - image_norm ** 2).clamp_min(0) / c + freed ** 2).sqrt()
        new = new / (new_norm + 1e-12) * budget
        delta = delta.masked_fill(w2, 0.0).masked_scatter(w1, new.contiguous())
        return self._on_sphere(x, delta)

    def _on_sphere(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x + ε·δ/‖δ‖₂ per image, clamped to [0, 1] (the L2 Square always spends its whole
        budget before clamping)."""
        scale = self.eps / l2_norms(delta).clamp_min(1e-12)
        return (images + delta * scale[:, None, None, None]).clamp(0.0, 1.0)

    # -- shared -------------------------------------------------------------------------

    @staticmethod
    def _positions(n: int, h: int, w: int, s: int, gen: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners ``(N,)``, ``(N,)`` of s×s windows inside an H×W image."""
        top = torch.randint(0, h - s + 1, (n,), generator=gen, device=device)
        left = torch.randint(0, w - s + 1, (n,), generator=gen, device=device)
        return top, left

    @staticmethod
    def _window(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
        """``(m, 1, H, W)`` bool masks of the s×s windows at ``(top, left)``."""
        rows = torch.arange(h, device=top.device)
        cols = torch.arange(w, device=top.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)  # (m, H)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)  # (m, W)
        return in_rows[:, None, :, None] & in_cols[:, None, None, :]
