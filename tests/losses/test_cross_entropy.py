"""The cross-entropy wrapper against a hand-written log-softmax."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval_bio.losses import create_loss


def test_cross_entropy_on_argmax_of_one_hot_labels() -> None:
    loss = create_loss("cross-entropy", num_classes=3, bits=None)
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    labels = torch.tensor([[0.0, 1, 0], [1, 0, 0]])
    expected = 0.0
    for row, target in zip(logits.tolist(), [1, 0], strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += (log_z - row[target]) / 2
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert loss(logits, torch.tensor([1, 0])).item() == pytest.approx(expected, rel=1e-6)
    assert loss.param_groups(1e-3) == [] and not list(loss.parameters())
