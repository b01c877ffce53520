"""APGD, APGD-T and the AutoAttack-style ensemble (Croce & Hein 2020): the schedule and the
losses against independent formulas, and the attacks' properties measured on the trained
digits classifier."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from retrieval_bio import rules
from retrieval_bio.attacks import (
    APGD,
    APGDT,
    PGD,
    AutoAttack,
    Square,
    apgd_checkpoints,
    dlr_loss,
    dlr_targeted_loss,
)


def correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y.argmax(1)


def accuracy(model, x, y) -> float:
    return correct(model, x, y).float().mean().item()


# -- the schedule and the losses -----------------------------------------------------------


def paper_checkpoints(n_iter: int) -> list[int]:
    """The paper's w_j with exact rational arithmetic (an independent oracle)."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(q * n_iter) for q in p} - {0})


@pytest.mark.parametrize("n_iter", [1, 3, 10, 20, 50, 100, 137, 1000])
def test_checkpoints_follow_the_paper(n_iter):
    w = apgd_checkpoints(n_iter)
    assert w == paper_checkpoints(n_iter)
    assert w == sorted(set(w)) and 1 <= w[0] and w[-1] <= n_iter
    if n_iter == 100:
        assert w == [22, 41, 57, 70, 80, 87, 93, 99]


def dlr_by_hand(z: list[float], y: int, target: int | None = None) -> float:
    """The paper's formulas, one image, plain Python."""
    order = sorted(z, reverse=True)
    if target is None:
        return -(z[y] - max(v for i, v in enumerate(z) if i != y)) / (order[0] - order[2])
    return -(z[y] - z[target]) / (order[0] - 0.5 * (order[2] + order[3]))


def test_dlr_losses_equal_the_papers_formulas():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.5, -1.0, 4.0, 2.5]],
                     dtype=torch.float64)
    y = torch.tensor([0, 2, 3])
    # by hand: −(3 − 2)/(3 − 1); −(2 − 3)/(3 − 1); −(2.5 − 4)/(4 − 0.5)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5, 0.5, 1.5 / 3.5],
                                                            dtype=torch.float64))
    t = torch.tensor([3, 1, 0])
    # −(3 − 0)/(3 − (1 + 0)/2); −(2 − 1)/2.5; −(2.5 − 0.5)/(4 − (0.5 − 1)/2)
    torch.testing.assert_close(dlr_targeted_loss(z, y, t),
                               torch.tensor([-1.2, -0.4, -2 / 4.25], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (50,), generator=g)
    t = (y + torch.randint(1, 7, (50,), generator=g)) % 7
    expected = [dlr_by_hand(r.tolist(), int(c)) for r, c in zip(z, y, strict=True)]
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor(expected, dtype=torch.float64))
    expected = [dlr_by_hand(r.tolist(), int(c), int(d)) for r, c, d in zip(z, y, t, strict=True)]
    torch.testing.assert_close(dlr_targeted_loss(z, y, t),
                               torch.tensor(expected, dtype=torch.float64))
    # shift and scale invariant, unlike cross-entropy
    torch.testing.assert_close(dlr_loss(5 * z + 2, y), dlr_loss(z, y))
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_targeted_loss(z[:, :3], y.clamp(max=2), t.clamp(max=2))


# -- APGD on the trained classifier ---------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_never_ends_below_its_start(classifier, digits, norm, eps):
    """From x (no random start) the returned image either fools the model or has a loss at
    least that of x: the best point is tracked per image."""
    x, y = digits.query.images, digits.query.labels
    for loss in ("ce", "dlr"):
        attack = APGD(classifier, eps, norm=norm, loss=loss, n_iter=20, random_start=False)
        adv = attack(x, y)
        assert attack.n_grad_calls == 21  # the start and 20 iterates, one run
        ok = correct(classifier, x, y)
        fooled = ok & ~correct(classifier, adv, y)
        kept = ok & ~fooled
        assert torch.equal(adv[~ok], x[~ok])  # misclassified clean: left alone
        fn = (lambda z, c: F.cross_entropy(z, c, reduction="none")) if loss == "ce" else dlr_loss
        with torch.no_grad():
            before = fn(classifier(x[kept]), y[kept].argmax(1))
            after = fn(classifier(adv[kept]), y[kept].argmax(1))
        assert (after >= before - 1e-6).all()
        assert fooled.sum() > 0.2 * ok.sum()  # and it did attack


@pytest.mark.parametrize("norm,eps_list", [("linf", (0.05, 0.1, 0.15)), ("l2", (0.5, 1.0, 1.5))])
def test_apgd_at_least_as_strong_as_pgd_with_the_same_budget(classifier, digits, norm,
                                                             eps_list):
    """20 gradient calls each: APGD (19 iterations + its start) against PGD-20 with seed
    002's step ε/8 (ep.md §2.2) and with a larger step ε/4, both from x."""
    x, y = digits.query.images, digits.query.labels
    for eps in eps_list:
        apgd = APGD(classifier, eps, norm=norm, n_iter=19)
        a = accuracy(classifier, apgd(x, y), y)
        assert apgd.n_grad_calls <= 20  # fewer once every image is broken
        for alpha in (eps / 8, eps / 4):
            pgd = PGD(classifier, eps, steps=20, alpha=alpha, norm=norm)
            assert a <= accuracy(classifier, pgd(x, y), y)


def test_restarts_only_add_broken_images(classifier, digits):
    # the first run of both draws the same start, so later runs can only break more
    x, y = digits.query.images, digits.query.labels
    one = correct(classifier, APGD(classifier, 0.08, n_iter=10, seed=5)(x, y), y)
    three = APGD(classifier, 0.08, n_iter=10, n_restarts=3, seed=5)
    assert (correct(classifier, three(x, y), y) <= one).all()
    assert three.n_grad_calls == 3 * 11  # every run attacked the images still robust


def test_apgd_t_targets_and_counts(classifier, digits):
    x, y = digits.query.images[:64], digits.query.labels[:64]
    attack = APGDT(classifier, 0.1, n_iter=10, n_target_classes=3)
    adv = attack(x, y)
    runs = attack.n_grad_calls / 11
    assert runs == int(runs) and 1 <= runs <= 3  # one run per target while images are left
    assert accuracy(classifier, adv, y) < accuracy(classifier, x, y) - 0.2
    three = torch.nn.Sequential(classifier, torch.nn.Linear(10, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGDT(three, 0.1, n_iter=2)(x, y.argmax(1) % 3)


def test_apgd_exact_and_model_gradients(classifier, digits):
    """grad="exact" on an frSF model attacks through W: the same as attacking the unconverted
    network (BP), while grad="model" follows the feedback matrices."""
    x, y = digits.query.images[:64], digits.query.labels[:64]
    bp = APGD(classifier, 0.05, n_iter=8, grad="model")(x, y)
    assert torch.equal(APGD(classifier, 0.05, n_iter=8, grad="exact")(x, y), bp)
    frsf = rules.convert(copy.deepcopy(classifier), "frsf", seed=0)
    fr_exact = APGD(frsf, 0.05, n_iter=8, grad="exact")(x, y)
    assert not torch.equal(fr_exact, APGD(frsf, 0.05, n_iter=8, grad="model")(x, y))
    # signs may differ where the gradient is ~0, so compare the fraction of equal pixels
    assert (fr_exact == bp).float().mean() > 0.95


# -- the ensemble ---------------------------------------------------------------------------


class Quantise(torch.nn.Module):
    """Pixels rounded to multiples of 1/4: the input gradient is zero almost everywhere, so
    APGD is blind (only its random starts can break an image) and Square does the work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


@pytest.mark.parametrize("kind,norm,eps", [("plain", "linf", 0.1), ("masked", "l2", 2.0)])
def test_auto_is_the_per_image_and_of_its_parts(classifier, digits, kind, norm, eps):
    # float64: each part then gives the same result on a subset of the batch as on all of it
    model = copy.deepcopy(classifier).double()
    if kind == "masked":
        model = torch.nn.Sequential(Quantise(), model)
    x, y = digits.query.images[:64].double(), digits.query.labels[:64]
    settings = dict(norm=norm, n_iter=10, seed=3)
    auto = AutoAttack(model, eps, n_target_classes=3, n_queries=40, **settings)
    adv = auto(x, y)
    parts = [APGD(model, eps, loss="ce", **settings),
             APGDT(model, eps, n_target_classes=3, **settings),
             Square(model, eps, n_queries=40, norm=norm, seed=3)]
    robust = correct(model, x, y)
    for part in parts:
        robust &= correct(model, part(x, y), y)
    assert torch.equal(correct(model, adv, y), robust)
    b = auto.breakdown
    assert sum(b.values()) == len(x) and b["robust"] == int(robust.sum())
    assert b["clean_errors"] == int((~correct(model, x, y)).sum())
    # each model exercises its own part of the ensemble
    assert b["apgd-ce"] > 20 if kind == "plain" else (b["square"] > 10 and b["apgd-t"] > 0)
    # whole APGD runs of 10 iterations + the start; APGD-T only on what APGD-CE left
    assert auto.n_grad_calls % 11 == 0
    assert parts[0].n_grad_calls < auto.n_grad_calls <= parts[0].n_grad_calls + \
        parts[1].n_grad_calls
    # deterministic under a seed, and the breakdown accumulates over calls until reset
    again = AutoAttack(model, eps, n_target_classes=3, n_queries=40, **settings)
    assert torch.equal(again(x, y), adv) and again.breakdown == b
    again(x[:8], y[:8])
    assert sum(again.breakdown.values()) == len(x) + 8
    again.reset_counters()
    assert sum(again.breakdown.values()) == 0 and again.n_grad_calls == 0


def test_auto_at_eps_zero_returns_the_images(classifier, digits):
    x, y = digits.query.images[:32], digits.query.labels[:32]
    auto = AutoAttack(classifier, 0.0, n_iter=5, n_queries=5)
    assert torch.equal(auto(x, y), x)
    assert auto.n_grad_calls == 0 and auto.breakdown["robust"] == int(correct(
        classifier, x, y).sum())
