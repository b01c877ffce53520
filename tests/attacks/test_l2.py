"""L2 threat model on the shared base: projection, random start, normalised steps (FGSM/PGD)
and the L2 Square attack, checked against closed forms and budget oracles."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from retrieval_bio.attacks import FGSM, PGD, Square, margin, square_pattern
from retrieval_bio.attacks.base import l2_project
from retrieval_bio.progress import NullProgress


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y.argmax(1)).float().mean().item()


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


def test_l2_projection_closed_form(classifier):
    g = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    delta = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    delta[:3] *= 0.3 / delta[:3].flatten(1).norm(dim=1)[:, None, None, None]  # inside ε = 0.5
    delta[3:] *= 2.0 / delta[3:].flatten(1).norm(dim=1)[:, None, None, None]  # outside
    adv = x + delta
    out = l2_project(adv, x, 0.5)
    assert torch.equal(out[:3], adv[:3])  # inside: unchanged, bit for bit
    d = delta[3:]
    expected = x[3:] + 0.5 * d / d.flatten(1).norm(dim=1)[:, None, None, None]
    torch.testing.assert_close(out[3:], expected, rtol=0, atol=1e-12)
    assert (l2(out, x) <= 0.5 * (1 + 1e-9)).all()
    # the base method adds the [0, 1] clamp, which can only move entries towards x
    attack = PGD(classifier, 0.5, norm="l2")
    wild = x + 3.0 * torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    projected = attack.project(wild, x)
    assert projected.min() >= 0 and projected.max() <= 1
    assert (l2(projected, x) <= 0.5 * (1 + 1e-6)).all()
    assert torch.equal(attack.project(projected, x), projected)  # idempotent
    assert torch.equal(PGD(classifier, 0.0, norm="l2").project(wild, x), x)


def test_l2_random_start_fills_the_ball(classifier):
    x = torch.full((2000, 3, 8, 8), 0.5)
    start = PGD(classifier, 1.0, norm="l2").random_init(x, torch.Generator().manual_seed(0))
    r = l2(start, x)
    assert r.max() <= 1.0 + 1e-6
    # uniform in the volume of a 192-dimensional ball: P(r < 1 − t) = (1 − t)^192
    assert (r < 0.97).float().mean() < 0.03 + 0.02
    assert (r > 0.9).all()  # (0.9)^192 ≈ 2e-9
    # every direction: the mean direction of 2000 draws is ~0
    unit = (start - x).flatten(1) / r[:, None]
    assert unit.mean(0).norm() < 0.1


def test_fgsm_l2_is_one_normalised_gradient_step(classifier, digits):
    x, y = digits.query.images[:16].double(), digits.query.labels[:16]
    model = copy.deepcopy(classifier).double()
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y.argmax(1), reduction="sum").backward()
    g = xr.grad
    expected = (x + 0.7 * g / g.flatten(1).norm(dim=1)[:, None, None, None]).clamp(0, 1)
    torch.testing.assert_close(FGSM(model, 0.7, norm="l2", grad="model")(x, y), expected,
                               rtol=0, atol=1e-12)


def test_pgd_l2_stays_in_budget_and_beats_fgsm(classifier, digits):
    x, y = digits.query.images, digits.query.labels
    for eps in (0.5, 1.5):
        adv = PGD(classifier, eps, steps=10, alpha=eps / 4, norm="l2", grad="model")(x, y)
        assert (l2(adv, x) <= eps + 1e-6).all()
        assert adv.min() >= 0 and adv.max() <= 1
        fgsm = FGSM(classifier, eps, norm="l2", grad="model")(x, y)
        assert accuracy(classifier, adv, y) <= accuracy(classifier, fgsm, y)
    assert accuracy(classifier, adv, y) < accuracy(classifier, x, y) - 0.3


def test_zero_gradient_gives_no_l2_step(classifier):
    attack = PGD(classifier, 1.0, norm="l2")
    g = torch.zeros(2, 3, 4, 4)
    g[1, 0, 0, 0] = 1e-30
    step = attack.ascent_direction(g)
    assert torch.equal(step[0], g[0]) and torch.isfinite(step).all()


def test_square_pattern_matches_the_papers_construction():
    # s = 3 by hand: top row the rectangles around its centre (1/4 + 1, 1, 1/4 + ...),
    # bottom two rows the negated rectangles around (1, 1), each block before normalising
    top = torch.tensor([[0.25, 1.25, 0.25]], dtype=torch.float64)
    bottom = -torch.tensor([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]], dtype=torch.float64)
    expected = torch.cat([top / top.norm(), bottom / bottom.norm()])
    torch.testing.assert_close(square_pattern(3), expected / expected.norm())
    for s in (1, 2, 5, 8):
        p = square_pattern(s)
        assert p.shape == (s, s) and abs(p.norm().item() - 1) < 1e-12
        assert (p[s // 2:] <= 0).all() and (p[: s // 2] >= 0).all()


def test_square_l2_budget_and_effect(classifier, digits):
    x, y = digits.query.images, digits.query.labels
    sq = Square(classifier, 1.5, n_queries=150, norm="l2", seed=0)
    adv = sq(x, y)
    assert sq.n_grad_calls == 0
    assert (l2(adv, x) <= 1.5 * (1 + 1e-6)).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert accuracy(classifier, adv, y) < accuracy(classifier, x, y) - 0.2
    # random search keeps only improvements: the margin never exceeds the start's
    start = Square(classifier, 1.5, n_queries=0, norm="l2", seed=0)(x, y)
    with torch.no_grad():
        assert (margin(classifier(adv), y.argmax(1))
                <= margin(classifier(start), y.argmax(1)) + 1e-6).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_ignores_inactive_images(classifier, digits, norm):
    """An image's Square perturbation does not depend on which others are attacked (the
    draws are made for the whole batch): how AutoAttack runs it on what APGD left."""
    # float64: batches of other sizes round differently, and a candidate whose margin ties
    # the best one to float32 precision could be kept in one run and not in the other
    model = copy.deepcopy(classifier).double()
    x, y = digits.query.images[:48].double(), digits.query.labels[:48].argmax(1)
    sq = Square(model, 0.2 if norm == "linf" else 1.0, n_queries=40, norm=norm)
    active = torch.arange(48) % 3 != 0
    full, _ = sq.run(x, y, torch.Generator().manual_seed(0), NullProgress())
    part, fooled = sq.run(x, y, torch.Generator().manual_seed(0), NullProgress(),
                          active=active)
    assert torch.equal(part[~active], x[~active])  # untouched
    torch.testing.assert_close(part[active], full[active], rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.equal(fooled, active & (model(part).argmax(1) != y))
