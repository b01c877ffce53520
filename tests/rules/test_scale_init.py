"""``scale="init"`` gives B the magnitude of BioTorch's B under its xavier init.

BioTorch (jsalbert/biotorch, ``biotorch/layers/fa_constructor/linear.py`` and ``conv.py``,
``init="xavier"``), with a = sqrt(6 / (fan_in + fan_out)) and σ = sqrt(2 / (fan_in + fan_out)):

* FA: B = ``xavier_uniform_`` draw, U[−a, a] (std σ), fixed;
* uSF: B = σ·sign(W);
* frSF: B = |fixed xavier draw|∘sign(W); brSF: |fresh xavier draw|∘sign(W).

Each test builds BioTorch's B from these formulas and compares it with ``rules.feedback`` of a
layer converted with ``scale="init"``: uSF exactly; frSF / brSF by support, sign and the
distribution of |B|; FA by its std and E||B||_F² (our R is normal, BioTorch's uniform). The
random parts are seeded, so the tests are deterministic; every statistical tolerance is
K = 6 standard errors (or a two-sample Kolmogorov–Smirnov bound at level 1e-9), so a correct
implementation would fail them with a negligible probability under any seed, while the old
σ for frSF / brSF (√3 too small) misses them by hundreds of standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from retrieval_bio import rules

K = 6.0  # tolerance in standard errors
KS_LEVEL = 1e-9


def _linear() -> nn.Linear:
    return nn.Linear(512, 256)  # W (256, 512): 131,072 weights


def _conv() -> nn.Conv2d:
    return nn.Conv2d(64, 128, 3, padding=1)  # W (128, 64, 3, 3): 73,728 weights


LAYERS = {"linear": _linear, "conv": _conv}


def _fans(w: torch.Tensor) -> tuple[int, int]:
    """fan_in, fan_out by hand (a conv's include its receptive field), checked against torch's
    ``_calculate_fan_in_and_fan_out``, which BioTorch uses."""
    receptive = math.prod(w.shape[2:])
    fans = (w.shape[1] * receptive, w.shape[0] * receptive)
    assert fans == nn.init._calculate_fan_in_and_fan_out(w)
    return fans


def _bounds(w: torch.Tensor) -> tuple[float, float]:
    """(a, σ): the bound and the std of ``xavier_uniform_`` (gain 1) for W's shape."""
    fan_in, fan_out = _fans(w)
    return math.sqrt(6.0 / (fan_in + fan_out)), math.sqrt(2.0 / (fan_in + fan_out))


def _biotorch_feedback(w: torch.Tensor, rule: str, seed: int) -> torch.Tensor:
    """BioTorch's B for W (its ``fa_constructor`` forward with ``init="xavier"``)."""
    torch.manual_seed(seed)
    draw = nn.init.xavier_uniform_(torch.empty_like(w))
    if rule == "fa":
        return draw
    _, sigma = _bounds(w)
    if rule == "usf":
        return sigma * torch.sign(w)
    return draw.abs() * torch.sign(w)  # frsf (fixed draw) and brsf (fresh draw)


def _converted(kind: str, rule: str) -> nn.Module:
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    assert (layer.weight != 0).all()  # sign(W) = ±1 in both conventions
    return rules.convert(layer, rule, scale="init", seed=3)


def _ks_two_sample(x: torch.Tensor, y: torch.Tensor) -> float:
    """Two-sample Kolmogorov–Smirnov statistic sup |F_x − F_y|."""
    x, y = x.flatten().double().sort().values, y.flatten().double().sort().values
    grid = torch.cat([x, y])
    fx = torch.searchsorted(x, grid, right=True).double() / x.numel()
    fy = torch.searchsorted(y, grid, right=True).double() / y.numel()
    return float((fx - fy).abs().max())


def _ks_bound(n: int, m: int) -> float:
    """Asymptotic two-sample KS critical value at level ``KS_LEVEL``."""
    return math.sqrt(-math.log(KS_LEVEL / 2) * (n + m) / (2 * n * m))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_usf_init_equals_biotorch(kind: str) -> None:
    layer = _converted(kind, "usf")
    w = layer.weight.detach()
    assert torch.equal(rules.feedback(layer), _biotorch_feedback(w, "usf", seed=1))


def _check_sign_magnitude(b: torch.Tensor, w: torch.Tensor, bt: torch.Tensor) -> None:
    """B = a·M∘sign(W) against BioTorch's |U[−a, a]|∘sign(W): support, sign, distribution."""
    a, _ = _bounds(w)
    n = b.numel()
    mag, mag_bt = (b * torch.sign(w)).double(), (bt * torch.sign(w)).double()
    # support and sign: sign(B) = sign(W) (|B| = 0 only if M = 0 exactly), |B| <= a
    assert (mag >= 0).all() and (mag_bt >= 0).all()
    assert mag.max() <= a * (1 + 1e-6) and mag_bt.max() <= a * (1 + 1e-6)
    # mean |B| = a/2, var a²/12: standard error a/sqrt(12 n)
    se = a / math.sqrt(12 * n)
    assert abs(mag.mean().item() - a / 2) <= K * se
    assert abs(mag.mean().item() - mag_bt.mean().item()) <= K * math.sqrt(2) * se
    # E|B|² = a²/3 = σ² (so E||B||_F² = n σ² as BioTorch's), var 4a⁴/45
    se2 = math.sqrt(4 / 45) * a * a / math.sqrt(n)
    assert abs(mag.square().mean().item() - a * a / 3) <= K * se2
    # max |B| close to a: P(max < a(1 − 20/n)) = (1 − 20/n)^n ≈ e^−20
    assert mag.max() >= a * (1 - 20 / n)
    # the whole distribution of |B| is BioTorch's
    assert _ks_two_sample(mag, mag_bt) <= _ks_bound(n, n)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("rule", ["frsf", "brsf"])
def test_sign_magnitude_init_matches_biotorch(kind: str, rule: str) -> None:
    layer = _converted(kind, rule)
    w = layer.weight.detach()
    _check_sign_magnitude(rules.feedback(layer), w, _biotorch_feedback(w, rule, seed=1))
    if rule == "brsf":  # a fresh M after a step: new values, same distribution
        before = rules.feedback(layer)
        rules.on_optimizer_step(layer)
        after = rules.feedback(layer)
        assert not torch.equal(before, after)
        _check_sign_magnitude(after, w, _biotorch_feedback(w, rule, seed=2))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fa_init_matches_biotorch_std(kind: str) -> None:
    """Same std σ and E||B||_F² = n σ² as BioTorch's uniform draw; the shape differs (our R
    is normal), so only the first two moments are compared."""
    layer = _converted(kind, "fa")
    w = layer.weight.detach()
    _, sigma = _bounds(w)
    b = rules.feedback(layer).double()
    bt = _biotorch_feedback(w, "fa", seed=1).double()
    n = b.numel()
    # normal: se of the mean σ/sqrt(n), of the std ≈ σ/sqrt(2n), of mean(B²) σ² sqrt(2/n)
    assert abs(b.mean().item()) <= K * sigma / math.sqrt(n)
    assert abs(b.std().item() - sigma) <= K * sigma / math.sqrt(2 * n)
    assert abs(b.square().sum().item() / n - sigma**2) <= K * sigma**2 * math.sqrt(2 / n)
    # BioTorch's U[−a, a]: mean(B²) has se sqrt(4/45)·a²/sqrt(n) = sqrt(4/5)·σ²/sqrt(n)
    se_bt = math.sqrt(4 / 5) * sigma**2 / math.sqrt(n)
    assert abs(bt.square().sum().item() / n - sigma**2) <= K * se_bt
    assert abs(b.square().sum().item() - bt.square().sum().item()) / n \
        <= K * math.hypot(sigma**2 * math.sqrt(2 / n), se_bt)


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf"])
def test_init_backward_uses_the_same_b(rule: str) -> None:
    """The input gradient of both layers is the one of ``rules.feedback``, whether s is applied
    to dx (small batch: dx smaller than B) or folded into the cached B (large batch), in either
    order on the same layer."""
    g = torch.Generator().manual_seed(0)
    for kind, shapes in (("linear", [(1, 512), (600, 512), (2, 512)]),
                         ("conv", [(1, 64, 16, 16), (5, 64, 16, 16), (2, 64, 16, 16)])):
        layer = _converted(kind, rule)
        b = rules.feedback(layer)
        for shape in shapes:
            x = torch.randn(shape, generator=g, requires_grad=True)
            out = layer(x)
            gy = torch.randn(out.shape, generator=g)
            (dx,) = torch.autograd.grad(out, x, gy)
            if kind == "linear":
                expected = gy @ b
            else:
                expected = torch.nn.grad.conv2d_input(x.shape, b, gy, padding=1)
            torch.testing.assert_close(dx, expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(rules.feedback(layer), b, rtol=0, atol=0)
