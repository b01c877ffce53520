"""Krotov–Hopfield local learning (Krotov & Hopfield, PNAS 2019; seed 003, Holzhausen et
al. 2024): an unsupervised, winner-take-all Hebbian rule for the ``kh`` backbone's layer.
Labels are never read.

Per batch of flat, per-image-normalised inputs v ``(B, N)`` and W ``(K, N)``::

    h_μb = ⟨W_μ, v_b⟩ = Σ_i sign(W_μi)|W_μi|^{p−1} v_bi       (the layer's currents)
    g_μb = +1 for the unit ranked first by h_·b, −Δ for the unit ranked k-th, 0 else
    ΔW_μi = Σ_b g_μb (R^p v_bi − h_μb W_μi)
    W ← W + ε_t ΔW / max(max_μi |ΔW_μi|, prec)

Ranking is by h (the fast code of [K] and [H]'s ``FKHL3``; PNAS ranks by h/‖W‖_p^{p−1},
the same order once ‖W_μ‖_p ≈ R). The step is written as ``W.grad = −ΔW / max|ΔW|`` so the
trainer's plain SGD (momentum 0, weight decay 0) with learning rate ε0 and the ``linear``
schedule (ε_t = ε0·(1 − t/T), t = 0..T−1 as [K]) applies it; Adam, momentum or weight decay
would break the max-normalisation, and AMP does not apply (``uses_amp = False``).

After the last epoch (:meth:`KrotovHopfield.finish`) the run checks convergence ([H]
``weight_convergence_criterion`` / ``weight_mean_criterion``: fewer than 10 % of units with
|‖W_μ‖_p − R| > 0.01, no unit whose mean weight is below −R/2) and prunes: every unit whose
weight variance over its N inputs exceeds ``prune_threshold`` (seed 003: 0.0015, for
CIFAR-10's N = 3072) has its whole weight vector set to 0 (``prune="gmm"``: [H]'s automatic
cutoff from Gaussian mixtures of the log-variances). The head is trained afterwards in a
second run with the layer frozen: ``retrieval-bio finetune --init RUN --freeze-backbone``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import distributed
from .base import LEARNERS, Learner, StepContext

log = logging.getLogger(__name__)

PRUNES = ("threshold", "gmm", "none")
#: [H]'s convergence criteria: tolerance on ‖W_μ‖_p − R and the largest share of units
#: allowed outside it
NORM_TOLERANCE = 1e-2
MAX_OFF_FRACTION = 0.1
#: [H] ``StatisticGardener``: the log-variance window its mixtures are fitted on
GMM_WINDOW = (-9.0, -3.0)


def _layer_of(model: nn.Module):
    from ..models.krotov import KHNet

    net = getattr(getattr(model, "backbone", None), "net", None)
    return net if isinstance(net, KHNet) else None


def krotov_increment(w: torch.Tensor, v: torch.Tensor, *, p: float, k: int, delta: float,
                     radius: float = 1.0) -> torch.Tensor:
    """The batch increment ΔW ``(K, N)`` of the rule for weights ``w`` ``(K, N)`` and inputs
    ``v`` ``(B, N)`` (before the max-normalisation; see the module docstring)."""
    synaptic = w if p == 2 else w * w.abs().pow(p - 2)
    h = v @ synaptic.T  # (B, K)
    top = h.topk(k, dim=1).indices  # (B, k), largest first
    first, kth = top[:, 0], top[:, k - 1]
    # g has two non-zeros per sample, so Σ_b g_μb v_b is two scatter-adds of the inputs, not
    # a dense (K, B) x (B, N) product
    hebb = torch.zeros_like(w).index_add_(0, first, v).index_add_(0, kth, v, alpha=-delta)
    rows = torch.arange(len(h), device=h.device)
    coef = (torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            .index_add_(0, first, h[rows, first]).index_add_(0, kth, h[rows, kth], alpha=-delta))
    return radius ** p * hebb - coef[:, None] * w


def weight_variance(w: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of each unit's N input weights ``(K,)``."""
    return w.detach().double().var(dim=1, unbiased=True)


def gmm_cutoff(variances: np.ndarray, *, window: tuple[float, float] = GMM_WINDOW,
               max_components: int = 5, p_value: float = 0.01, seed: int = 0) -> float | None:
    """[H]'s automatic pruning cutoff: Gaussian mixtures on the log-variances inside
    ``window``, adding components while a likelihood-ratio test gives p < ``p_value``;
    cutoff = exp(μ_noise − |μ_noise − μ_imgs|/2) with μ_noise the highest mean and μ_imgs the
    heaviest other component. ``None`` when one component suffices (no separate noise
    population) or fewer than 10 variances fall inside the window."""
    from scipy.stats import chi2
    from sklearn.mixture import GaussianMixture

    logv = np.log(np.asarray(variances, dtype=float))
    x = logv[(logv > window[0]) & (logv < window[1])].reshape(-1, 1)
    if len(x) < 10:
        return None
    best = GaussianMixture(1, random_state=seed).fit(x)
    for m in range(2, max_components + 1):
        cand = GaussianMixture(m, random_state=seed).fit(x)
        stat = 2 * len(x) * (cand.score(x) - best.score(x))
        if chi2.sf(stat, df=3) >= p_value:  # each component adds a mean, variance, weight
            break
        best = cand
    if best.n_components < 2:
        return None
    means = best.means_.ravel()
    noise = int(np.argmax(means))
    others = [i for i in range(len(means)) if i != noise]
    imgs = max(others, key=lambda i: best.weights_[i])
    return float(math.exp(means[noise] - abs(means[noise] - means[imgs]) / 2))


@torch.no_grad()
def prune_units(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero, in place, every row (unit) of ``w`` ``(K, N)`` whose weight variance exceeds
    ``threshold``; returns the boolean mask of pruned units ``(K,)``."""
    pruned = weight_variance(w) > threshold
    w[pruned.to(w.device)] = 0
    return pruned


def convergence(layer, radius: float = 1.0) -> dict[str, Any]:
    """[H]'s convergence criteria of a ``kh`` layer: the share of units whose ‖W_μ‖_p is
    off R by more than 0.01 (must stay below 10 %) and the units in the wrong attractor
    (mean weight < −R/2; must be none). Pruned (all-zero) units are left out; a layer with
    none left has not converged."""
    w = layer.currents.weight.detach()
    alive = w.abs().sum(1) > 0
    norms = layer.currents.unit_norms()[alive]
    off = float(((norms - radius).abs() > NORM_TOLERANCE).float().mean()) if len(norms) else 0.0
    wrong = int((w[alive].mean(1) < -radius / 2).sum())
    return {"norm_off_fraction": off, "mean_unit_norm": float(norms.mean()) if len(norms)
            else float("nan"), "wrong_attractor_units": wrong,
            "units": int(alive.sum()),
            "converged": bool(len(norms)) and off < MAX_OFF_FRACTION and wrong == 0}


@LEARNERS.register("krotov", help="Krotov–Hopfield (PNAS 2019; seed 003): unsupervised "
                   "rank-k Hebbian rule for the kh layer; labels unused; then prune")
class KrotovHopfield(Learner):
    """The Krotov–Hopfield learner for the ``kh`` backbone (module docstring has the rule).

    Args:
        k: rank of the anti-Hebbian unit (≥ 2; seed 003 CIFAR: 2).
        delta: anti-Hebbian strength Δ (0.4).
        radius: R, the p-norm the units converge to (1.0).
        precision: floor of the max-normalisation's divisor ([K]: 1e-30).
        prune: ``"threshold"`` (default), ``"gmm"`` or ``"none"``.
        prune_threshold: weight-variance cutoff of ``"threshold"`` (0.0015, seed 003's
            CIFAR-10 value; it scales with the input size N, see docs/learners.md).
        seed: the GMM's seed.
    """

    name = "krotov"
    uses_amp = False
    has_loss = False
    supervised = False
    syncs_gradients = True
    #: the training curve's panel: the history key it draws and its label
    curve = ("convergence.norm_off_fraction", "share of units with |‖W_μ‖_p − R| > 0.01")

    def __init__(self, *, k: int = 2, delta: float = 0.4, radius: float = 1.0,
                 precision: float = 1e-30, prune: str = "threshold",
                 prune_threshold: float = 0.0015, seed: int = 0) -> None:
        super().__init__()
        if int(k) != k or k < 2:
            raise ValueError(f"k must be an integer >= 2 (with k = 1 the winner would also "
                             f"get −Δ), got {k}")
        if prune not in PRUNES:
            raise ValueError(f"prune must be one of {', '.join(PRUNES)}, got {prune!r}")
        for name, v in (("delta", delta), ("prune_threshold", prune_threshold)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v}")
        for name, v in (("radius", radius), ("precision", precision)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        self.k, self.delta, self.radius = int(k), float(delta), float(radius)
        self.precision = float(precision)
        self.prune, self.prune_threshold = prune, float(prune_threshold)
        self.seed = int(seed)

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        from ..config import ConfigError

        layer = _layer_of(model)
        if layer is None:
            backbone = getattr(getattr(model, "backbone", None), "name", type(model).__name__)
            raise ConfigError(
                f"rule 'krotov' cannot train backbone {backbone!r}: the Krotov–Hopfield rule "
                f"is defined for its own hidden layer; use --backbone kh (options: hidden, p, "
                f"power, input_norm, sigma, grey)")
        if not layer.currents.weight.requires_grad:
            raise ConfigError("rule 'krotov' trains the kh layer, but the backbone is frozen: "
                              "drop --freeze-backbone (it is for the head stage)")
        if getattr(model, "frontend", None) is not None:
            raise ConfigError("rule 'krotov' takes the image itself; drop the front end")

    def prepare(self, model: nn.Module, objective: nn.Module) -> None:
        self.check_model(model)
        hidden = _layer_of(model).currents.weight.shape[0]
        if self.k > hidden:
            from ..config import ConfigError

            raise ConfigError(f"learner option k={self.k} exceeds the kh layer's {hidden} "
                              f"units; use k <= hidden")

    def training_step(
        self, model: nn.Module, objective: nn.Module, images: torch.Tensor,
        labels: torch.Tensor, ctx: StepContext,
    ) -> None:
        layer = _layer_of(model)
        w = layer.currents.weight
        with torch.no_grad():
            v = layer.inputs(model.backbone.normalize(images))
            ds = krotov_increment(w, v, p=layer.currents.p, k=self.k, delta=self.delta,
                                  radius=self.radius)
            # ΔW sums over the batch: summed over ranks it is the whole batch's, and only
            # then may it be max-normalised
            distributed.all_reduce_sum(ds)
            w.grad = -ds / ds.abs().max().clamp_min(self.precision)
        return None

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """The convergence criteria, logged in every epoch's history entry."""
        return {"convergence": convergence(_layer_of(model), self.radius)}

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """Check convergence (a warning when it failed), then prune; returns the metrics."""
        layer = _layer_of(model)
        conv = convergence(layer, self.radius)
        warnings = []
        w = layer.currents.weight
        variances = weight_variance(w).cpu().numpy()
        threshold: float | None = None
        if self.prune == "threshold":
            threshold = self.prune_threshold
        elif self.prune == "gmm":
            threshold = gmm_cutoff(variances, seed=self.seed)
            if threshold is None:
                warnings.append("prune=gmm found no separate high-variance population "
                                "(one mixture component); nothing was pruned")
        pruned = (prune_units(w, threshold) if threshold is not None
                  else torch.zeros(len(variances), dtype=torch.bool))
        n = int(pruned.sum())
        if n > len(variances) // 2:
            warnings.append(
                f"pruning removed {n} of {len(variances)} units (variance > {threshold:.3g}); "
                f"seed 003's 0.0015 is set for CIFAR-10's 3,072 inputs and the variance of a "
                f"unit with ‖W‖_p = 1 grows as N shrinks: raise prune_threshold or use "
                f"prune=gmm")
        after = convergence(layer, self.radius)
        if not conv["converged"]:
            warnings.insert(0,
                f"the Krotov–Hopfield layer did not converge: {conv['norm_off_fraction']:.1%} "
                f"of units have |‖W_μ‖_p − R| > {NORM_TOLERANCE} (at most "
                f"{MAX_OFF_FRACTION:.0%} allowed) and {conv['wrong_attractor_units']} sit in "
                f"the wrong attractor (mean weight < −R/2); after pruning "
                f"{after['norm_off_fraction']:.1%} and {after['wrong_attractor_units']} "
                f"({'converged' if after['converged'] else 'still not converged'}). Train "
                f"longer (more epochs), or retrain with another --seed ([H]'s advice for the "
                f"wrong attractor)")
        return {"convergence": conv, "convergence_after_pruning": after,
                "pruning": {
            "method": self.prune, "threshold": threshold, "units_pruned": n,
            "units_kept": len(variances) - n,
            "variance_quantiles": {str(q): float(np.quantile(variances, q))
                                   for q in (0.05, 0.25, 0.5, 0.75, 0.95)}},
            "warnings": warnings}

    def describe(self) -> dict[str, object]:
        return {"learner": self.name, "k": self.k, "delta": self.delta, "radius": self.radius,
                "prune": self.prune, "prune_threshold": self.prune_threshold}
