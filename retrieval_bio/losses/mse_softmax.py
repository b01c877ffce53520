"""Mean squared error through the softmax: the BP baseline loss of PEPITA (seed 000).

Dellaferrera & Kreiman 2022 (Eq. 2) train their BP reference with ``ℓ = ½ Σ_c (p_c − y_c)²``,
``p = softmax(z)``, so the output error keeps the softmax derivative σ'_L:
``∂ℓ/∂z = J_softmax(z)ᵀ (p − y) = p ⊙ ((p − y) − Σ_c p_c (p_c − y_c))`` — unlike cross-entropy,
whose gradient is plain ``p − y``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cross_entropy import ClassificationLoss, class_indices
from .registry import LOSSES


class MSESoftmaxLoss(ClassificationLoss):
    """``½ Σ_c (softmax(z)_c − y_c)²`` averaged over the batch, ``y`` the one-hot argmax label.

    ``forward(logits, labels)``: ``logits`` (N, C); ``labels`` (N, C) one-hot/multi-hot
    (the first label of a multi-hot row is the target) or (N,) integer class ids. The value is
    in squared-probability units, in [0, 1] per row.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2:
            raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        if labels.ndim == 2 and labels.shape != logits.shape:
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of "
                             f"shape {tuple(logits.shape)}: pass (N, C) one-hot or (N,) ids")
        y = F.one_hot(class_indices(labels), num_classes).to(logits.dtype)
        p = torch.softmax(logits, dim=1)
        return 0.5 * (p - y).square().sum(dim=1).mean()


@LOSSES.register("mse-softmax", help="½‖softmax(z) − y‖² on the argmax label (PEPITA's BP)")
def create_mse_softmax(
    *, num_classes: int | None = None, bits: int | None = None, **_: object
) -> MSESoftmaxLoss:
    """Registry constructor; ``bits`` is accepted and ignored so all losses build alike."""
    return MSESoftmaxLoss(num_classes)
