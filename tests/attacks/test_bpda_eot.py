"""BPDA and EOT in the shared attack base (seed 004 §5): a quantised model defeats the plain
exact gradient and falls to BPDA; EOT with one sample is the plain attack; EOT draws come
from the model's own generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval_bio.attacks import FGSM, PGD, Square
from retrieval_bio.attacks.base import eot_reduce
from retrieval_bio.models.frontends import CoeffDropout, Quantizer


class Quantised(nn.Module):
    """A linear classifier on ternary-quantised pixels: its true input gradient is zero."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.q = Quantizer((-0.5, 0.5))
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.q(2 * x - 1).flatten(1))


class Noisy(nn.Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.drop = CoeffDropout(p, seed=3)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.flatten(1)))


@pytest.fixture(scope="module")
def quantised_task():
    # two classes: "bright" vs "dark" images; the model is right on every one of them
    g = torch.Generator().manual_seed(0)
    n, d = 64, 3 * 4 * 4
    y = torch.arange(n) % 2
    base = torch.where(y.view(-1, 1, 1, 1) == 1, 0.85, 0.15)
    x = (base + 0.05 * torch.rand(n, 3, 4, 4, generator=g)).clamp(0, 1)
    w = torch.stack([-torch.ones(d), torch.ones(d)])
    return Quantised(w), x, y


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_bpda_identity_breaks_a_quantised_model_the_plain_gradient_cannot(quantised_task):
    model, x, y = quantised_task
    assert _accuracy(model, x, y) == 1.0
    # flipping a pixel's code from +1 to -1 takes a change of more than 0.6
    plain = FGSM(model, 0.7)
    adv = plain(x, y)
    assert torch.equal(adv, x)  # a zero gradient: FGSM does not move a pixel
    assert _accuracy(model, PGD(model, 0.7, steps=10, random_start=False)(x, y), y) == 1.0
    for setting in ("identity", "smooth"):
        adv = PGD(model, 0.7, steps=10, random_start=False, bpda=setting)(x, y)
        assert (adv - x).abs().max() <= 0.7 + 1e-6
        assert _accuracy(model, adv, y) < 0.2, setting
    assert model.q.backward_mode == "autograd"  # the attack restored the op


def test_eot_with_one_sample_is_the_plain_attack():
    torch.manual_seed(0)
    model = Noisy()
    x, y = torch.rand(6, 3, 2, 2), torch.arange(6) % 4
    for reduce in ("mean", "normalized", "sign"):
        a = PGD(model, 0.1, steps=4, seed=5)
        b = PGD(model, 0.1, steps=4, seed=5, eot=1, eot_reduce=reduce)
        assert torch.equal(a(x, y), b(x, y))
    e = PGD(model, 0.1, steps=4, seed=5, eot=3)
    e(x, y)
    assert e.n_grad_calls == 12  # 3 samples per step, counted


def test_eot_samples_see_fresh_draws_reproducibly_without_the_global_rng():
    torch.manual_seed(0)
    model = Noisy()
    model.eval()  # the front end's dropout ignores training mode
    x, y = torch.rand(5, 3, 2, 2), torch.arange(5) % 4
    grads = []
    probe = FGSM(model, 0.1)
    for _ in range(3):
        grads.append(probe.input_grad(x, lambda out, _x: F.cross_entropy(out, y))[1])
    assert not torch.equal(grads[0], grads[1]) and not torch.equal(grads[1], grads[2])
    state = torch.get_rng_state()
    attack = PGD(model, 0.1, steps=3, seed=9, eot=4)
    first = attack(x, y)
    torch.manual_seed(1234)
    assert torch.equal(attack(x, y), first)  # the attack reseeds the model's own generator
    assert not torch.equal(PGD(model, 0.1, steps=3, seed=10, eot=4)(x, y), first)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    attack(x, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_eot_reducers_against_hand_formulas():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(4, 3, 2, 5, generator=g, dtype=torch.float64)
    grads[1, 0] = 0.0  # a zero sample contributes zero, never NaN
    torch.testing.assert_close(eot_reduce(grads, "mean"), grads.mean(0))
    torch.testing.assert_close(eot_reduce(grads, "sign"), grads.sign().mean(0))
    by_hand = torch.zeros(3, 2, 5, dtype=torch.float64)
    for r in range(4):
        for i in range(3):
            n = float(grads[r, i].norm())
            by_hand[i] += grads[r, i] / (n + 1e-12) / 4
    torch.testing.assert_close(eot_reduce(grads, "normalized"), by_hand)
    assert torch.isfinite(eot_reduce(grads, "normalized")).all()


def test_gradient_free_attacks_refuse_bpda_and_eot_and_bad_values(quantised_task):
    model = quantised_task[0]
    with pytest.raises(ValueError, match="gradient-free"):
        Square(model, 0.1, bpda="identity")
    with pytest.raises(ValueError, match="gradient-free"):
        Square(model, 0.1, eot=2)
    with pytest.raises(ValueError, match="eot"):
        PGD(model, 0.1, eot=0)
    with pytest.raises(ValueError, match="eot_reduce"):
        PGD(model, 0.1, eot=2, eot_reduce="median")
    assert "bpda='identity'" in repr(PGD(model, 0.1, bpda="identity"))
