"""HyP² loss: hyper-sphere proxies plus pairs (Xu et al., ACM MM 2022, "HyP²: Hyper-sphere
Proxies and Pairs" / "HyP² Loss: Beyond Hypersphere Metric Space for Multi-label Image
Retrieval"; official code JerryXu0129/HyP2-Loss; SPEC §4).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from .codetable import hyp2_threshold
from .registry import LOSSES

#: Default proxy learning rate as a multiple of the hash head's, for Adam. Adam's step is
#: about ``lr`` per coordinate whatever the gradient scale, so what matters is the step relative
#: to a parameter's magnitude: head weights are ~1/sqrt(fan_in) ≈ 0.02-0.04 per coordinate
#: (512-4096 features) while Kaiming fan-out proxies are ~sqrt(2/C) ≈ 0.14-0.45 (C = 10-100),
#: about 10x larger. A factor of 10 gives proxies a comparable *relative* rate. (The official
#: code, under SGD, gives proxies 0.02, 1-2x the network's rate.)
DEFAULT_PROXY_LR_MULT = 10.0

#: Floor on ‖h‖ in the cosine normalisation: a zero row gets cosine 0 and a finite gradient
#: instead of 0/0 = NaN. Only rows with ‖h‖ < this are affected.
NORM_EPS = 1e-8


def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines ``(N, M)`` between rows of ``a`` (N, K) and ``b`` (M, K), NaN-free at 0 rows."""
    return F.normalize(a, dim=1, eps=NORM_EPS) @ F.normalize(b, dim=1, eps=NORM_EPS).T


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]``; 0 (still a graph-connected tensor) when ``mask`` is empty."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1)


class HyP2Loss(nn.Module):
    """HyP² loss over raw hash-layer outputs, holding C learnable class proxies.

    With ``cos`` the cosine similarity, ``y`` the multi-hot labels and ε the margin
    (:func:`hyp2_threshold` unless given):

    * proxy term: mean over (i, c) with y_ic = 1 of ``1 - cos(h_i, P_c)`` plus mean over
      (i, c) with y_ic = 0 of ``relu(cos(h_i, P_c) - ε)`` (an empty set's mean is 0);
    * pair term: over pairs i ≠ j of samples that *each* have more than one label and share
      no label, ``β · mean relu(cos(h_i, h_j) - ε)``; 0 when no such pair exists, so
      single-label data never gets it. Pairs are taken ordered, (i, j) and (j, i), as in the
      official code; cos is symmetric, so the mean equals the mean over unordered pairs.
      i = j never qualifies (a sample shares its own labels).

    Args:
        num_classes: C.
        bits: K, code length (width of the hash layer).
        beta: β, weight of the pair term (paper and official default 0.5).
        threshold: ε override (a cosine in [-1, 1]); ``None`` reads it from the code table.
        proxy_lr_mult: proxies' learning rate as a multiple of the head's, used by
            :meth:`param_groups` (see ``DEFAULT_PROXY_LR_MULT`` for why 10 under Adam).
        seed: seeds the proxy initialisation with a local generator (global RNG untouched);
            ``None`` draws from the global RNG.

    Attributes:
        proxies: ``nn.Parameter`` (C, K), Kaiming-normal init in fan-out mode
            (std = sqrt(2 / C)).
        threshold: ε used in ``forward``.

    Shapes: ``forward(h, labels)`` with ``h`` (N, K) raw hash outputs (no tanh) and ``labels``
    (N, C) multi-hot (float/int/bool; nonzero means "has the label"); returns a 0-d tensor.
    """

    def __init__(
        self, num_classes: int, bits: int, beta: float = 0.5, threshold: float | None = None,
        proxy_lr_mult: float = DEFAULT_PROXY_LR_MULT, seed: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.bits = int(bits)
        self.beta = float(beta)
        self.threshold = (
            hyp2_threshold(num_classes, bits) if threshold is None else float(threshold)
        )
        self.proxy_lr_mult = float(proxy_lr_mult)
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        # kaiming_normal_(mode="fan_out", nonlinearity="leaky_relu", a=0) on a (C, K) matrix:
        # fan_out = C and gain = sqrt(2), as the official code initialises its proxies.
        std = math.sqrt(2.0 / self.num_classes)
        self.proxies = nn.Parameter(torch.empty(num_classes, bits).normal_(0.0, std, generator=gen))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, bits={self.bits}, beta={self.beta}, "
            f"threshold={self.threshold:.6g}, proxy_lr_mult={self.proxy_lr_mult}"
        )

    def param_groups(self, head_lr: float) -> list[dict]:
        """Optimiser param groups for the proxies: one group at ``head_lr * proxy_lr_mult``."""
        return [{"params": [self.proxies], "lr": head_lr * self.proxy_lr_mult}]

    def proxy_term(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Proxy part of the loss (0-d); shapes as in :meth:`forward`."""
        pos = labels != 0
        cos = _cosine_matrix(h, self.proxies.to(h.dtype))
        return _masked_mean(1.0 - cos, pos) + _masked_mean(F.relu(cos - self.threshold), ~pos)

    def pair_term(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """β-weighted pair part of the loss (0-d, zero without qualifying pairs)."""
        pos = labels != 0
        multi = pos.sum(dim=1) > 1
        if self.beta == 0 or int(multi.sum()) < 2:
            return h.new_zeros(())
        y = pos[multi].to(h.dtype)
        disjoint = (y @ y.T) == 0  # diagonal is False: each sample shares its own labels
        cos = _cosine_matrix(h[multi], h[multi])
        return self.beta * _masked_mean(F.relu(cos - self.threshold), disjoint)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """HyP² loss (0-d) of raw codes ``h`` (N, K) under multi-hot ``labels`` (N, C)."""
        if h.ndim != 2 or h.shape[1] != self.bits:
            raise ValueError(f"h must be (N, {self.bits}), got {tuple(h.shape)}")
        if labels.shape != (h.shape[0], self.num_classes):
            raise ValueError(
                f"labels must be multi-hot (N, C) = ({h.shape[0]}, {self.num_classes}), "
                f"got {tuple(labels.shape)}"
            )
        if self.training:
            # Both terms couple the batch (pairs; means over its positive label entries,
            # whose count varies with multi-label data): under data parallelism each rank
            # computes the loss of the global batch, gathered with its gradient flowing
            # back to each rank's share, which after the trainer's averaging is exactly the
            # one-process gradient.
            h, labels = distributed.gather_batch(h), distributed.gather_batch(labels)
        return self.proxy_term(h, labels) + self.pair_term(h, labels)


@LOSSES.register("hyp2", help="HyP² proxies + pairs for hashing (Xu et al., ACM MM 2022)")
def create_hyp2(*, num_classes: int, bits: int, **kwargs: object) -> HyP2Loss:
    """Registry constructor for :class:`HyP2Loss` (``kwargs``: beta, threshold, ...)."""
    return HyP2Loss(num_classes, bits, **kwargs)  # type: ignore[arg-type]
