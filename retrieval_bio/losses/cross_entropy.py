"""Cross-entropy for single-label classification, taking the multi-hot labels every dataset
yields so the trainer can call every loss the same way."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import LOSSES


def class_indices(labels: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 class ids from ``(N, C)`` one-hot/multi-hot rows (the argmax: the first
    label of a multi-hot row) or from ``(N,)`` ids."""
    return labels.argmax(dim=1) if labels.ndim == 2 else labels.long()


class ClassificationLoss(nn.Module):
    """Base of the single-label classification losses: no parameters of their own, labels
    as multi-hot rows or ids (:func:`class_indices`)."""

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def param_groups(self, head_lr: float) -> list[dict]:
        """No parameters of its own: an empty list."""
        return []


class MultiHotCrossEntropy(ClassificationLoss):
    """Softmax cross-entropy (mean over the batch, nats) on the argmax label of each row.

    ``forward(logits, labels)``: ``logits`` (N, C); ``labels`` (N, C) one-hot/multi-hot
    (the first label of a multi-hot row is the target) or (N,) integer class ids.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, class_indices(labels))


@LOSSES.register("cross-entropy", help="softmax cross-entropy on the argmax label (classify)")
def create_cross_entropy(
    *, num_classes: int | None = None, bits: int | None = None, **_: object
) -> MultiHotCrossEntropy:
    """Registry constructor; ``bits`` is accepted and ignored so all losses build alike."""
    return MultiHotCrossEntropy(num_classes)
