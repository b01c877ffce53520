"""HAG: Hash Adversary Generation (Yang et al., "Adversarial examples for Hamming space
search", IEEE T-Cybernetics 2018), as specified in SPEC §7 and SAAT's ``hag.py``.

Untargeted L∞ attack on a hashing model: push the relaxed adversarial code
h' = tanh(α·f(x')) away from the clean code h, only on the bits not yet flipped, while keeping
the adversarial code's bits balanced.

Two details checked against SAAT (xandery-geek/SAAT, ``model/attack_model/hag.py``):

* the balance term is taken on the masked code m∘h' by default (``balance="masked"``, SAAT's
  form); ``balance="unmasked"`` keeps this toolkit's earlier form on h' itself;
* SAAT reports the adversarial code computed in the forward pass *before* its last SGD step
  (the ``h_hat`` of the final loop iteration), whereas the caller here recomputes the code on
  the final, projected images (``binarize(model(adv))``), which is what a retrieval system
  sees. This is deliberate and stays.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..progress import Progress
from .base import ATTACKS, Attack, resolve_preset
from .relaxed import optimise_relaxed

PRESETS = {"paper": {"steps": 5}, "reference": {"eps": 8 / 255, "steps": 2000}}
BALANCES = ("masked", "unmasked")
"""Forms of HAG's bit-balance term: on m∘h' (SAAT's ``hag_loss``, default) or on h'."""


def _check_balance(balance: str) -> str:
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
    return balance


def hag_mask(h_adv: torch.Tensor, h_clean: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """m_k = 1 where |h'_k − sign(h_k)| < 1 + t (bit not yet flipped), else 0; ``(Q, K)``.

    sign(0) = +1 (SPEC §1). Values are exactly 0.0 or 1.0 in ``h_adv``'s dtype.
    """
    s = torch.where(h_clean >= 0, 1.0, -1.0).to(h_adv.dtype)
    return ((h_adv - s).abs() < 1 + t).to(h_adv.dtype)


def hag_loss(
    h_adv: torch.Tensor, h_clean: torch.Tensor, t: float = 0.5, beta: float = 1.0,
    reduction: str = "mean", balance: str = "masked",
) -> torch.Tensor:
    """HAG objective (to minimise), SPEC §7.

    ``mean_i[(Σ_k m·h'·h / (Σ_k m + 1e-8) + 1)²] + β·mean_i[(mean_k b)²]`` with the mask m
    of :func:`hag_mask` (constant: no gradient flows through it) and the balanced code

    * b = m∘h' for ``balance="masked"`` (default): SAAT's ``hag_loss``, which masks the
      adversarial code before both terms. The mean is still over all K bits (masked-out bits
      count as 0), and bits already flipped get no gradient from the balance term;
    * b = h' for ``balance="unmasked"``: this toolkit's earlier form, which keeps pushing the
      flipped bits towards balance too.

    The two coincide when no bit is masked out (m = 1). The tests check both forms against
    independent loop implementations; ``"masked"`` is the one the attacks use by default.

    Args:
        h_adv: relaxed adversarial codes h' ``(Q, K)`` in (−1, 1).
        h_clean: clean continuous codes h ``(Q, K)`` (treated as constants).
        t: mask threshold.
        beta: weight of the bit-balance term.
        reduction: ``"mean"`` (the scalar above) or ``"none"`` (per query, ``(Q,)``: the
            bracketed terms before the mean over i).
        balance: ``"masked"`` (SAAT) or ``"unmasked"`` (see above).

    Raises:
        ValueError: unknown ``reduction`` or ``balance``.
    """
    _check_balance(balance)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    h_clean = h_clean.detach()
    m = hag_mask(h_adv.detach(), h_clean, t)
    masked = m * h_adv
    similarity = (masked * h_clean).sum(1) / (m.sum(1) + 1e-8)
    balanced = masked if balance == "masked" else h_adv
    per_query = (similarity + 1).square() + beta * balanced.mean(1).square()
    return per_query if reduction == "none" else per_query.mean()


@ATTACKS.register("hag", help="HAG (Yang et al. 2018): untargeted hashing attack, SGD")
class HAG(Attack):
    """HAG (Yang et al. 2018) on a hashing model, L∞, images in [0, 1].

    Per iteration i of ``steps``: h' = tanh(α_i·f(x')) with α_i from the 10-segment schedule
    (:func:`~retrieval_bio.attacks.relaxed.alpha_at`); one SGD step (lr, momentum) on x' of
    :func:`hag_loss` against the clean code h = tanh(f(x)) (SAAT's model output at α = 1);
    then projection onto the ε-ball and [0, 1]. x' starts at x (no random start).

    The returned images are the final projected x'; their code is recomputed by the caller.
    SAAT instead reports the code of its last forward pass, taken before its last SGD step
    and projection, i.e. of an image it does not return; ours is the code a retrieval system
    would compute for the returned image.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> pre-binarisation output f ``(N, K)``.
        eps: L∞ budget (pixels in [0, 1]); ``None`` takes it from ``preset``.
        steps: iterations; ``None`` takes it from ``preset`` (5, the ``paper`` preset, when
            no preset is named).
        grad: ``"exact"`` or ``"model"`` gradient source (SPEC §2).
        preset: ``"paper"`` (5 steps, seed 001) or ``"reference"`` (ε = 8/255, 2,000 steps,
            SAAT); explicit ``eps``/``steps`` override it.
        seed: unused by the algorithm (deterministic), kept for a uniform interface.
        lr, momentum: SGD on x' (reference: 100, 0.9).
        t, beta: mask threshold and balance weight of :func:`hag_loss`.
        ref_batch: the loss is summed over the batch and divided by ``ref_batch`` instead of
            the batch size, so a query's perturbation does not depend on which batch it came
            in. SGD's step scales with this factor; with batches of ``ref_batch`` (SAAT's 32)
            it is exactly the reference's batch mean.
        balance: form of the balance term, ``"masked"`` (SAAT, default) or ``"unmasked"``
            (see :func:`hag_loss`); stored as ``self.balance``.
        norm: ``"linf"`` only (accepted so that ``norm="l2"`` is refused with a clear error).

    Raises:
        ValueError: ``steps`` < 1 or an unknown ``balance``.

    Cost: one forward without gradient (clean codes) plus one forward + one backward per
    step.
    """

    name = "hag"
    #: L∞ only: the papers and SAAT define HAG and SDHA for an L∞ budget.
    norms = ("linf",)

    def __init__(
        self, model: nn.Module, eps: float | None = None, steps: int | None = None, *,
        grad: str = "exact", preset: str | None = None, seed: int = 0, lr: float = 100.0,
        momentum: float = 0.9, t: float = 0.5, beta: float = 1.0, ref_batch: int = 32,
        balance: str = "masked", norm: str = "linf", **options: Any,
    ) -> None:
        v = resolve_preset(PRESETS, preset, eps=eps, steps=steps)
        super().__init__(model, v["eps"], grad=grad, seed=seed, norm=norm, **options)
        if int(v["steps"]) < 1:
            raise ValueError(f"steps must be >= 1, got {v['steps']}")
        self.steps = int(v["steps"])
        self.lr, self.momentum, self.t, self.beta = lr, momentum, t, beta
        self.ref_batch = int(ref_batch)
        self.balance = _check_balance(balance)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        h_clean = torch.tanh(self.predict(images))
        x_adv = images.clone()
        opt = torch.optim.SGD([x_adv], lr=self.lr, momentum=self.momentum)

        def per_query(h_adv: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
            return hag_loss(h_adv, h_clean, self.t, self.beta, reduction="none",
                            balance=self.balance)

        return optimise_relaxed(self, images, opt, x_adv, per_query, progress, "HAG")
