"""FGSM, PGD and Square on a trained digits classifier (SPEC §8), both gradient sources."""

from __future__ import annotations

import copy

import pytest
import torch

from retrieval_bio import rules
from retrieval_bio.attacks import FGSM, PGD, Square, margin


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y.argmax(1)).float().mean().item()


def test_trained_classifier_is_accurate(classifier, digits):
    assert accuracy(classifier, digits.query.images, digits.query.labels) > 0.9


def test_pgd_at_least_as_strong_as_fgsm_on_average(classifier, digits):
    x, y = digits.query.images, digits.query.labels
    eps_list = (0.05, 0.1, 0.2)
    fgsm = [accuracy(classifier, FGSM(classifier, e, grad="model")(x, y), y) for e in eps_list]
    pgd = [accuracy(classifier, PGD(classifier, e, grad="model")(x, y), y) for e in eps_list]
    assert sum(pgd) <= sum(fgsm)
    assert min(fgsm) < accuracy(classifier, x, y) - 0.3  # the attacks do bite


def test_fgsm_is_one_signed_gradient_step(classifier, digits):
    x, y = digits.query.images[:16].double(), digits.query.labels[:16]
    model = copy.deepcopy(classifier).double()
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(xr), y.argmax(1)).backward()
    expected = (x + 0.1 * xr.grad.sign()).clamp(0, 1)
    assert torch.equal(FGSM(model, 0.1, grad="model")(x, y), expected)


def test_pgd_accepts_class_ids_and_multi_hot(classifier, digits):
    x, y = digits.query.images[:16], digits.query.labels[:16]
    a = PGD(classifier, 0.1, grad="model")
    assert torch.equal(a(x, y), a(x, y.argmax(1)))


def test_square_lowers_accuracy_without_gradient_calls(classifier, digits):
    x, y = digits.query.images, digits.query.labels
    sq = Square(classifier, 0.2, n_queries=100, seed=0)
    adv = sq(x, y)
    assert sq.n_grad_calls == 0
    assert 0 < sq.n_forward_calls <= 101
    assert accuracy(classifier, adv, y) < accuracy(classifier, x, y) - 0.3


def test_square_never_increases_the_margin(classifier, digits):
    x, y = digits.query.images[:64], digits.query.labels[:64]
    adv = Square(classifier, 0.1, n_queries=50)(x, y)
    start = Square(classifier, 0.1, n_queries=0)(x, y)  # the stripe initialisation only
    with torch.no_grad():
        assert (margin(classifier(adv), y.argmax(1))
                <= margin(classifier(start), y.argmax(1)) + 1e-6).all()


@pytest.mark.parametrize("cls", [FGSM, PGD])
def test_exact_and_model_gradients(cls, classifier, digits):
    x, y = digits.query.images[:64], digits.query.labels[:64]
    bp = cls(classifier, 0.05, grad="model")(x, y)
    assert torch.equal(cls(classifier, 0.05, grad="exact")(x, y), bp)
    frsf = rules.convert(copy.deepcopy(classifier), "frsf", seed=0)
    fr_exact = cls(frsf, 0.05, grad="exact")(x, y)
    fr_model = cls(frsf, 0.05, grad="model")(x, y)
    assert not torch.equal(fr_exact, fr_model)
    # exact = the gradient of the same weights without feedback matrices; signs may differ
    # only where the gradient is ~0, so compare the fraction of equal pixels
    assert (fr_exact == bp).float().mean() > 0.99
