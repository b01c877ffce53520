"""MSE through the softmax (PEPITA's BP loss) against float64 hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval_bio.losses import LOSSES, MSESoftmaxLoss, create_loss

LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [0.2, 0.2, -0.7]]
TARGETS = [1, 0, 2]


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    ex = [math.exp(v - m) for v in row]
    return [v / sum(ex) for v in ex]


def test_value_equals_a_hand_computation() -> None:
    loss = create_loss("mse-softmax", num_classes=3, bits=None)
    assert isinstance(loss, MSESoftmaxLoss) and "mse-softmax" in LOSSES
    expected = 0.0
    for row, t in zip(LOGITS, TARGETS, strict=True):
        p = _softmax(row)
        expected += 0.5 * sum((pc - (c == t)) ** 2 for c, pc in enumerate(p)) / len(LOGITS)
    value = loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert loss.param_groups(1e-3) == [] and not list(loss.parameters())


def test_ids_and_one_hot_labels_give_the_same_loss() -> None:
    loss = create_loss("mse-softmax", num_classes=3)
    logits = torch.tensor(LOGITS)
    one_hot = torch.nn.functional.one_hot(torch.tensor(TARGETS), 3).float()
    assert loss(logits, one_hot).item() == loss(logits, torch.tensor(TARGETS)).item()


def test_gradient_is_the_softmax_jacobian_times_the_error() -> None:
    z = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    n = z.shape[0]
    labels = torch.nn.functional.one_hot(torch.tensor(TARGETS), 3).to(torch.float64)
    MSESoftmaxLoss()(z, labels).backward()
    p = torch.softmax(z.detach(), dim=1)
    err = p - labels
    # J_softmax = diag(p) - p p^T (symmetric), one per row
    jac = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    by_jacobian = (jac.transpose(1, 2) @ err.unsqueeze(2)).squeeze(2) / n
    explicit = p * (err - (p * err).sum(dim=1, keepdim=True)) / n
    torch.testing.assert_close(z.grad, by_jacobian, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(z.grad, explicit, rtol=1e-12, atol=1e-15)


def test_mismatched_label_shape_names_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        MSESoftmaxLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
