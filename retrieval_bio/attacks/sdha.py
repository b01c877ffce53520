"""SDHA: Smart Deep Hashing Attack (Lu et al., "A smart adversarial attack on deep hashing
based image retrieval", ICMR 2021), as specified in SPEC §7 and SAAT's ``sdha.py``.

Untargeted L∞ attack: push the relaxed adversarial code h' = tanh(α·f(x')) away from the
codes of the query's relevant training images, weighting each relevant code by an AP-oriented
weight, with an MSE term that keeps x' close to x.

Vectorised form. For r ∈ {−1, +1}^K every summand of D depends on h'_k only through
u = h'_k·r_k: with g(u) = ½|1 − u|·σ(5u) + 1 − σ(5u) (note |h'_k − r_k| = |1 − h'_k r_k|),
D(h', r) = Σ_k g(h'_k r_k). Splitting g into even and odd parts e, o gives
g(h r) = e(h) + r·o(h) for r = ±1, so for all training codes R ``(N, K)`` at once

    D(h', R) = Σ_k e(h'_k) + o(h') @ Rᵀ        (Q, N)

— one matrix product, like the Hamming distances d_H = (K − sign(h')·Rᵀ)/2. Relevant sets of
different sizes become a (Q, N) averaging matrix; since w is a constant, the mean of w·D over
each relevant set needs no (Q, N) autograd graph at all (:func:`_surrogate`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..progress import Progress
from .base import ATTACKS, Attack, resolve_preset
from .relaxed import optimise_relaxed

PRESETS = {"paper": {"steps": 5}, "reference": {"eps": 8 / 255, "steps": 1500}}

SIGMA = 5.0  # slope of the sigmoid in D (SAAT: sigma=5)
WEIGHT_POWER = 0.5  # w = (d_H + 1e-8)^(−0.5) (SAAT: z=0.5)
SURROGATE_SCALE = 25.0  # the surrogate term is weighted 25 / K (SAAT: alpha=25)


def _pm1(codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sign with sign(0) = +1, as ``dtype`` in {−1, +1}."""
    return torch.where(codes >= 0, 1.0, -1.0).to(dtype)


def _g(u: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(SIGMA * u)
    return 0.5 * (1 - u).abs() * s + (1 - s)


def sdha_distance(h_adv: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """D(h', r) = ½ Σ_k |h'_k − r_k| σ(5 h'_k r_k) + Σ_k (1 − σ(5 h'_k r_k)) for every pair.

    Args:
        h_adv: relaxed codes h' ``(Q, K)``.
        codes: codes r ``(N, K)``; any sign representation (int8 ±1, float, continuous:
            their sign is taken, sign(0) = +1).

    Returns:
        ``(Q, N)`` distances, differentiable w.r.t. ``h_adv``; computed as one matrix product
        (module docstring).
    """
    r = _pm1(codes, h_adv.dtype)
    even = 0.5 * (_g(h_adv) + _g(-h_adv))
    odd = 0.5 * (_g(h_adv) - _g(-h_adv))
    return even.sum(1, keepdim=True) + odd @ r.T


def sdha_weights(h_adv: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """AP-oriented weights w = (d_H(sign h', r) + 1e-8)^(−0.5), detached, ``(Q, N)``.

    d_H is the Hamming distance between ±1 codes, (K − b·r)/2 (sign(0) = +1 for both).
    """
    b = _pm1(h_adv.detach(), h_adv.dtype)
    r = _pm1(codes, h_adv.dtype)
    d_h = 0.5 * (h_adv.shape[1] - b @ r.T)
    return (d_h + 1e-8).pow(-WEIGHT_POWER)


def relevance_mask(query_labels: torch.Tensor, train_labels: torch.Tensor) -> torch.Tensor:
    """``(Q, N)`` bool: query and training item share at least one label (SPEC §1)."""
    return (query_labels.float() @ train_labels.float().T) > 0


def sdha_surrogate(
    h_adv: torch.Tensor, train_codes: torch.Tensor, relevant: torch.Tensor,
    own_codes: torch.Tensor,
) -> torch.Tensor:
    """Per query ``(Q,)``: mean over its relevant codes r of w·D(h', r).

    Args:
        h_adv: relaxed codes h' ``(Q, K)``.
        train_codes: ``(N, K)`` codes (sign taken, sign(0) = +1).
        relevant: ``(Q, N)`` bool, which codes are relevant to which query.
        own_codes: ``(Q, K)`` the queries' clean codes: the only relevant code of a query
            with no relevant training code (SAAT's fallback).
    """
    codes_t, coef = prepare_relevant(train_codes, relevant, own_codes, h_adv.dtype)
    return _surrogate(h_adv, codes_t, coef)


def prepare_relevant(
    train_codes: torch.Tensor, relevant: torch.Tensor, own_codes: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-call constants of the surrogate: ±1 codes ``(K, N + Q)`` (the training codes
    then each query's own code) and the ``(Q, N + Q)`` averaging matrix (1 / |relevant set|
    on a query's relevant codes, or 1 on its own code when the set is empty)."""
    q = relevant.shape[0]
    codes_t = torch.cat([_pm1(train_codes, dtype), _pm1(own_codes, dtype)]).T.contiguous()
    count = relevant.sum(1, keepdim=True)
    fallback = (count == 0).to(dtype) * torch.eye(q, dtype=dtype, device=relevant.device)
    coef = torch.cat([relevant.to(dtype) / count.clamp(min=1), fallback], dim=1)
    return codes_t, coef


def _surrogate(h_adv: torch.Tensor, codes_t: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Σ_r coef[q, r]·w(h'_q, r)·D(h'_q, r) for every query, ``(Q,)``.

    With D = Σ_k e(h'_k) + o(h') @ Rᵀ and w detached, the sum is
    (Σ_r c_r w_r)·Σ_k e(h'_k) + Σ_k o(h'_k)·(c ∘ w @ R)_k: the gradient flows only through
    (Q, K) elementwise terms, and a step costs two (Q, K) x (K, N) products, no (Q, N) graph.
    """
    k = h_adv.shape[1]
    b = _pm1(h_adv.detach(), h_adv.dtype)
    w = (0.5 * (k - b @ codes_t) + 1e-8).pow(-WEIGHT_POWER)  # (Q, N + Q), detached
    cw = coef * w
    pulled = cw @ codes_t.T  # (Q, K), a constant
    g_pos, g_neg = _g(h_adv), _g(-h_adv)
    even, odd = 0.5 * (g_pos + g_neg), 0.5 * (g_pos - g_neg)
    return cw.sum(1) * even.sum(1) + (odd * pulled).sum(1)


@ATTACKS.register("sdha", help="SDHA (Lu et al. 2021): AP-weighted hashing attack, Adam")
class SDHA(Attack):
    """SDHA (Lu et al. 2021) on a hashing model, L∞, images in [0, 1].

    Relevant set of a query: the codes of training images sharing a label with the query's
    true label (a (Q, N) mask, computed once per call); if there are none, the query's own
    clean code sign(f(x)). Per iteration i of ``steps``: h' = tanh(α_i·f(x')); loss
    ``MSE(x', x) + (25/K)·(−mean_q mean_{r relevant} w·D(h', r))`` (:func:`sdha_distance`,
    :func:`sdha_weights`); one Adam step on x'; projection onto the ε-ball and [0, 1].

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> pre-binarisation output f ``(N, K)``.
        eps, steps, preset: as for :class:`~retrieval_bio.attacks.HAG`; ``"reference"`` is
            ε = 8/255 with 1,500 steps.
        train_codes: ``(N_train, K)`` codes of the training images (int8 ±1 or the continuous
            outputs; their sign is used), computed once with the attacked model.
        train_labels: ``(N_train, C)`` multi-hot labels of the training images.
        grad: ``"exact"`` or ``"model"`` gradient source.
        seed: unused by the algorithm (deterministic), kept for a uniform interface.
        lr: Adam learning rate on x' (reference 0.01, betas (0.9, 0.999)).
        ref_batch: the per-query losses (MSE of its own pixels + its surrogate term) are
            summed and divided by ``ref_batch``; equal to the batch mean of SPEC §7 for
            batches of ``ref_batch`` and independent of batch composition otherwise.
        norm: ``"linf"`` only (accepted so that ``norm="l2"`` is refused with a clear error).

    Call as ``attack(images, labels)`` with ``labels`` the queries' ``(Q, C)`` multi-hot
    labels. Cost: one forward without gradient plus one forward + one backward per step; the
    surrogate over all training codes is two (Q, K) x (K, N) matrix products per step.
    """

    name = "sdha"
    #: L∞ only, as the paper and SAAT define it.
    norms = ("linf",)

    def __init__(
        self, model: nn.Module, eps: float | None = None, steps: int | None = None,
        train_codes: torch.Tensor | None = None, train_labels: torch.Tensor | None = None, *,
        grad: str = "exact", preset: str | None = None, seed: int = 0, lr: float = 0.01,
        ref_batch: int = 32, norm: str = "linf", **options: Any,
    ) -> None:
        v = resolve_preset(PRESETS, preset, eps=eps, steps=steps)
        super().__init__(model, v["eps"], grad=grad, seed=seed, norm=norm, **options)
        if int(v["steps"]) < 1:
            raise ValueError(f"steps must be >= 1, got {v['steps']}")
        if train_codes is None or train_labels is None:
            raise ValueError("SDHA needs train_codes and train_labels")
        if train_codes.ndim != 2 or train_labels.ndim != 2:
            raise ValueError("train_codes must be (N, K) and train_labels (N, C)")
        if train_codes.shape[0] != train_labels.shape[0]:
            raise ValueError(
                f"{train_codes.shape[0]} train codes but {train_labels.shape[0]} labels"
            )
        self.steps = int(v["steps"])
        self.lr = lr
        self.ref_batch = int(ref_batch)
        self.train_codes = _pm1(train_codes, torch.float32)
        self.train_labels = train_labels.float()

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("SDHA needs the queries' labels")
        if labels.ndim != 2 or labels.shape[1] != self.train_labels.shape[1]:
            raise ValueError(
                f"labels must be (Q, {self.train_labels.shape[1]}) multi-hot, "
                f"got {tuple(labels.shape)}"
            )
        dtype = images.dtype
        relevant = relevance_mask(labels, self.train_labels.to(images.device))
        own = self.predict(images)
        codes_t, coef = prepare_relevant(self.train_codes.to(images.device), relevant, own,
                                         dtype)
        k = codes_t.shape[0]
        x_adv = images.clone()
        opt = torch.optim.Adam([x_adv], lr=self.lr, betas=(0.9, 0.999))

        def per_query(h_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            mse = (x - images).square().flatten(1).mean(1)
            return mse - (SURROGATE_SCALE / k) * _surrogate(h_adv, codes_t, coef)

        return optimise_relaxed(self, images, opt, x_adv, per_query, progress, "SDHA")
