"""Krotov–Hopfield hidden layer (``kh``) and its same-shape BP baseline (``shlp``).

Seed 003 (Holzhausen et al. 2024, arXiv 2405.00679; code [H] holzhauk/LocalLearning) after
Krotov & Hopfield, PNAS 2019 ([K] DimaKrotov/Biological_Learning). Both backbones map images
``(N, 3, H, W)`` in [0, 1] to ``a = ReLU(h)^n`` ``(N, K)``; the task head (Linear(K, C) with
bias) comes from :class:`~retrieval_bio.models.TaskModel`.

* ``kh``: the flat image v (optionally grey) is divided by its own L^q norm **inside the
  model** (seed 003: q = 3 over all pixels), so attacks stay in [0, 1] pixel space and their
  gradients flow through the normalisation. The currents are the p-metric bracket
  ``h_μ = Σ_i sign(W_μi)|W_μi|^{p−1} v_i`` (W of shape (K, N), init N(0, σ²) with σ = 1 as
  [K] and [H]'s script use), then ``a = ReLU(h)^n`` with n = 4.5. W is trained by the
  unsupervised ``krotov`` learner (:mod:`retrieval_bio.learners.krotov`), then frozen while
  the head trains (``freeze_backbone``).
* ``shlp``: the baselines' shape — a bias-free ``nn.Linear(N, K)`` (He-normal, σ = √(2/N)),
  then ``ReLU(h)^n`` with n = 1, all trained by BP (a plain Linear, so the feedback rules
  convert it too). Two optional regularisers, each the module's ``auxiliary_loss()`` that
  the autograd learner adds to the objective:

  - ``jacobian_penalty`` α_J: α_J·‖∂a/∂x‖_F², the Jacobian of the **post-nonlinearity**
    activations a with respect to the input pixels, estimated with ``jacobian_projections``
    random unit projections per image ([H]'s JReg differentiates the linear pre-activation,
    whose Jacobian is W for every input: an L2 penalty on W; seed 003 (d)8).
  - ``spectral_penalty`` α_S (Nassar et al. 2020, [H] ``SpecReg``): a BatchNorm1d after the
    currents, and the loss (1/K)·Σ_{n≥τ}[(λ_n/γ_n − 1)² + max(λ_n/γ_n − 1, 0)] with
    γ_n = n^{−α} and λ_n = diag(Sᵀ C_batch S). S, the eigenbasis of the **full training
    set's** covariance of the normalised currents (float64, correctly centred), is a buffer
    refreshed before training and after every epoch (:meth:`SHLPNet.refresh_statistics`);
    [H] used the last batch only and mis-centred it (seed 003 (d)7).

The L2 baseline needs no module: Adam's ``weight_decay`` w adds w·P to every gradient, which
is exactly the gradient of (w/2)·Σ‖P‖², so [H]'s 5e-4·Σ‖P‖² is ``weight_decay: 1e-3``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import distributed
from ..losses.jacobian import graph_jacobian_frobenius_sq
from .backbones import BACKBONES, BackboneSpec, WeightsNotFoundError
from .mlp import flat_inputs


def lp_normalize(v: torch.Tensor, q: float, eps: float = 1e-12) -> torch.Tensor:
    """``v / ‖v‖_q`` per row of ``(N, D)`` (q ≤ 0: unchanged). An all-zero image stays 0."""
    if q <= 0:
        return v
    norm = v.abs().pow(q).sum(1, keepdim=True).pow(1.0 / q)
    return v / norm.clamp_min(eps)


class KHCurrents(nn.Module):
    """The p-metric bracket ``h = v · (W ⊙ |W|^{p−2})ᵀ``: ``(N, in_features)`` ->
    ``(N, hidden)``, the layer's currents (its forward output, the "hidden" of [H]).

    Args:
        in_features: N, inputs per image.
        hidden: K units.
        p: the Lebesgue exponent (seed 003: 3; [K]'s MNIST notebook: 2).
        sigma: standard deviation of the N(0, σ²) init (1.0 as [K] and [H] used).
    """

    def __init__(self, in_features: int, hidden: int, p: float = 3.0, sigma: float = 1.0
                 ) -> None:
        super().__init__()
        if p < 2:
            raise ValueError(f"p must be >= 2 (the Lebesgue exponent of the bracket), got {p}")
        if hidden < 2:
            raise ValueError(f"hidden must be >= 2 (units compete), got {hidden}")
        self.p = float(p)
        self.weight = nn.Parameter(torch.randn(int(hidden), int(in_features)) * float(sigma))

    def synaptic(self) -> torch.Tensor:
        """``W ⊙ |W|^{p−2}`` ``(K, N)``: the weights the bracket applies."""
        w = self.weight
        return w if self.p == 2 else w * w.abs().pow(self.p - 2)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.synaptic().T

    def unit_norms(self) -> torch.Tensor:
        """``‖W_μ‖_p`` per unit ``(K,)``; the rule's fixed point is R = 1."""
        return self.weight.detach().abs().pow(self.p).sum(1).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        k, n = self.weight.shape
        return f"in_features={n}, hidden={k}, p={self.p:g}"


class _FlatNet(nn.Module):
    """Flatten (optionally grey), normalise per image, currents, then ``ReLU(h)^power``."""

    #: the module whose output the spectrum diagnostics read by default (the currents h,
    #: as [H]'s ``cov_spectrum`` does)
    representation_layer = "currents"

    def __init__(self, currents: nn.Module, in_features: int, power: float, input_norm: float,
                 grey: bool) -> None:
        super().__init__()
        if power < 1:
            raise ValueError(f"power must be >= 1 (a = ReLU(h)^power), got {power}")
        self.in_features = int(in_features)
        self.power = float(power)
        self.input_norm = float(input_norm)
        self.grey = bool(grey)
        self.currents = currents

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images -> the normalised flat input ``(N, in_features)``."""
        flat = flat_inputs(x, self.in_features, self.grey, type(self).__name__)
        return lp_normalize(flat, self.input_norm)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.relu(h)
        return a if self.power == 1 else a.pow(self.power)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.currents(self.inputs(x)))

    def extra_repr(self) -> str:
        return f"power={self.power:g}, input_norm={self.input_norm:g}, grey={self.grey}"


class KHNet(_FlatNet):
    """The Krotov–Hopfield hidden layer as a backbone (see the module docstring)."""

    def __init__(self, in_features: int, hidden: int = 2000, *, p: float = 3.0,
                 power: float = 4.5, input_norm: float = 3.0, sigma: float = 1.0,
                 grey: bool = False) -> None:
        super().__init__(KHCurrents(in_features, hidden, p, sigma), in_features, power,
                         input_norm, grey)

    @property
    def layer(self) -> KHCurrents:
        return self.currents


class SpectralPenalty(nn.Module):
    """Nassar et al. (2020)'s spectral loss on a batch of hidden vectors ``(B, K)``.

    ``basis`` S ``(K, K)`` (columns: eigenvectors of the full-data covariance, eigenvalues
    descending) is a persistent buffer set by :meth:`fit`; before the first fit the loss is 0.
    """

    def __init__(self, hidden: int, alpha: float = 1.0, tau: int = 0) -> None:
        super().__init__()
        if tau < 0 or tau >= hidden:
            raise ValueError(f"spectral_tau must lie in [0, hidden), got {tau}")
        self.alpha = float(alpha)
        self.tau = int(tau)
        # persistent, of fixed shape, so a checkpoint loads into a new model
        self.register_buffer("basis", torch.zeros(hidden, hidden))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, covariance: torch.Tensor) -> None:
        """Set S from a ``(K, K)`` covariance (float64 preferred)."""
        _, evecs = torch.linalg.eigh(covariance.double())
        self.basis.copy_(evecs.flip(1))
        self.fitted.fill_(True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.fitted or h.shape[0] < 2:
            return h.new_zeros(())
        z = (h - h.mean(0, keepdim=True)) @ self.basis.to(h.dtype)
        lam = z.pow(2).sum(0) / (h.shape[0] - 1)
        target = torch.arange(1, lam.numel() + 1, dtype=h.dtype, device=h.device)
        r = (lam / target.pow(-self.alpha) - 1)[self.tau:]
        return (r.pow(2) + torch.relu(r)).sum() / lam.numel()


class SHLPNet(_FlatNet):
    """The baselines' single hidden layer (see the module docstring).

    ``auxiliary_loss()`` is the weighted sum of the enabled regularisers of the most recent
    training forward (``None`` when none is enabled or no training forward ran).
    """

    def __init__(self, in_features: int, hidden: int = 2000, *, power: float = 1.0,
                 input_norm: float = 3.0, grey: bool = False, jacobian_penalty: float = 0.0,
                 jacobian_projections: int = 3, spectral_penalty: float = 0.0,
                 spectral_alpha: float = 1.0, spectral_tau: int = 0) -> None:
        linear = nn.Linear(in_features, hidden, bias=False)
        nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / in_features))
        super().__init__(linear, in_features, power, input_norm, grey)
        for name, v in (("jacobian_penalty", jacobian_penalty),
                        ("spectral_penalty", spectral_penalty)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v}")
        if jacobian_projections < 1:
            raise ValueError(f"jacobian_projections must be >= 1, got {jacobian_projections}")
        self.jacobian_penalty = float(jacobian_penalty)
        self.jacobian_projections = int(jacobian_projections)
        self.spectral_penalty = float(spectral_penalty)
        self.norm = nn.BatchNorm1d(hidden) if spectral_penalty > 0 else None
        self.spectral = (SpectralPenalty(hidden, spectral_alpha, spectral_tau)
                         if spectral_penalty > 0 else None)
        self._aux: torch.Tensor | None = None
        self._stats: list | None = None

    def hidden(self, v: torch.Tensor) -> torch.Tensor:
        """The (normalised, with the spectral regulariser) currents of the flat input."""
        h = self.currents(v)
        return h if self.norm is None else self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._aux = None
        regularise = self.training and torch.is_grad_enabled()
        if regularise and self.jacobian_penalty > 0 and not x.requires_grad:
            # the penalty differentiates a with respect to the pixels: make them a leaf
            x = x.detach().requires_grad_(True)
        h = self.hidden(self.inputs(x))
        a = self.activation(h)
        if self._stats is not None and not self.training:
            hd = h.detach().double()
            self._stats[0] = self._stats[0] + hd.sum(0)
            self._stats[1] = self._stats[1] + hd.T @ hd
            self._stats[2] += hd.shape[0]
        if regularise:
            aux = a.new_zeros(())
            if self.spectral is not None:
                aux = aux + self.spectral_penalty * self.spectral(h)
            if self.jacobian_penalty > 0:
                aux = aux + self.jacobian_penalty * graph_jacobian_frobenius_sq(
                    a, x, projections=self.jacobian_projections, create_graph=True).mean()
            self._aux = aux if (self.spectral is not None or self.jacobian_penalty > 0) else None
        return a

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self._aux

    @property
    def needs_statistics(self) -> bool:
        """The pipeline refreshes this net's full-data statistics (spectral regulariser)."""
        return self.spectral is not None

    def start_statistics(self) -> None:
        """Start accumulating the covariance of the hidden vectors over the forwards that
        follow (the pipeline runs the training split through the model in eval mode, before
        training and after every epoch)."""
        self._stats = [0.0, 0.0, 0]  # sum (K,), scatter (K, K), count, in float64

    def end_statistics(self) -> None:
        """Set the spectral regulariser's eigenbasis from the accumulated covariance,
        scatter − sum·sumᵀ/N over N − 1 (the whole data, correctly centred). Under data
        parallelism the sums are over every rank's share of the data."""
        stats, self._stats = self._stats, None
        if stats is None:
            return
        k = self.spectral.basis.shape[0]
        dev = self.spectral.basis.device
        # a rank whose share was empty still holds the Python zeros it started from
        total = torch.zeros(k, dtype=torch.float64, device=dev) + stats[0]
        scatter = torch.zeros(k, k, dtype=torch.float64, device=dev) + stats[1]
        count = torch.tensor([float(stats[2])], dtype=torch.float64, device=dev)
        for t in (total, scatter, count):
            distributed.all_reduce_sum(t)
        n = int(count.item())
        if n < 2:
            raise ValueError("the spectral regulariser needs at least 2 training images")
        self.spectral.fit((scatter - torch.outer(total, total) / n) / (n - 1))


def _flat_size(image_size: int, grey: bool) -> int:
    return (1 if grey else 3) * image_size * image_size


@BACKBONES.register("kh", help="Krotov–Hopfield hidden layer (seed 003): x/‖x‖_3, p-bracket "
                    "currents, ReLU(h)^4.5; train with rule 'krotov', then the head")
def kh(weights: str | None, *, image_size: int = 32, hidden: int = 2000, p: float = 3.0,
       power: float = 4.5, input_norm: float = 3.0, sigma: float = 1.0, grey: bool = False
       ) -> BackboneSpec:
    """Krotov–Hopfield layer of seed 003 / [H] (CIFAR-10: K = 2000, p = 3, n = 4.5)."""
    if weights == "imagenet":
        raise WeightsNotFoundError("kh has no ImageNet weights; train it with rule 'krotov'")
    net = KHNet(_flat_size(image_size, grey), hidden, p=p, power=power,
                input_norm=input_norm, sigma=sigma, grey=grey)
    # the normalisation is the per-image L^q one inside the net, not a mean/std one
    return BackboneSpec(net, int(hidden), mean=(0.0,) * 3, std=(1.0,) * 3)


@BACKBONES.register("shlp", help="seed 003's BP baselines: x/‖x‖_3, Linear (He), ReLU(h); "
                    "options jacobian_penalty (JReg), spectral_penalty (SpecReg)")
def shlp(weights: str | None, *, image_size: int = 32, hidden: int = 2000, power: float = 1.0,
         input_norm: float = 3.0, grey: bool = False, jacobian_penalty: float = 0.0,
         jacobian_projections: int = 3, spectral_penalty: float = 0.0,
         spectral_alpha: float = 1.0, spectral_tau: int = 0) -> BackboneSpec:
    """Single hidden layer of seed 003's BP, L2, JReg and SpecReg baselines ([H] ``SHLP``)."""
    if weights == "imagenet":
        raise WeightsNotFoundError("shlp has no ImageNet weights; train it instead")
    net = SHLPNet(_flat_size(image_size, grey), hidden, power=power, input_norm=input_norm,
                  grey=grey, jacobian_penalty=jacobian_penalty,
                  jacobian_projections=jacobian_projections, spectral_penalty=spectral_penalty,
                  spectral_alpha=spectral_alpha, spectral_tau=spectral_tau)
    return BackboneSpec(net, int(hidden), mean=(0.0,) * 3, std=(1.0,) * 3)
