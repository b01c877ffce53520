"""Representation diagnostics against independent oracles: the power-law fit on synthetic
spectra, the covariance spectrum against ``np.cov``, Jacobian norms against
``torch.autograd.functional.jacobian``, the projection estimate's mean, the penalty's double
backward against finite differences, and the critical-perturbation sweep against a brute-force
loop over every ε for every image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import PNG_SIGNATURE

from retrieval_bio.attacks import PGD
from retrieval_bio.config import ConfigError
from retrieval_bio.eval import plots
from retrieval_bio.eval import representation as R
from retrieval_bio.losses.jacobian import jacobian_frobenius_sq

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- small models


class Tiny(nn.Module):
    """backbone (flatten -> linear -> tanh) and a linear head, like a TaskModel."""

    def __init__(self, d_in: int = 12, hidden: int = 6, classes: int = 3, seed: int = 0,
                 representation_layer: str | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.Tanh())
        if representation_layer is not None:
            self.backbone.representation_layer = representation_layer
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def mlp(d_in: int = 6, hidden: int = 7, d_out: int = 5, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(dtype)


def exact_sq(fn, x: torch.Tensor) -> torch.Tensor:
    """‖J‖_F² per sample from the full Jacobian of one sample at a time (the oracle)."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0))[0], xb).pow(2).sum()
        for xb in x])


# ------------------------------------------------------------------------- spectrum


def test_power_law_fit_is_exact_on_a_pure_power_law():
    n = np.arange(1, 1001, dtype=float)
    fit = R.power_law_fit(3.0 * n ** -1.3)
    assert fit.alpha == pytest.approx(1.3, abs=1e-12)
    assert fit.stderr < 1e-10 and fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert (fit.n_first, fit.n_last, fit.n_points, fit.clipped) == (11, 500, 490, False)
    assert fit.intercept == pytest.approx(0.0, abs=1e-10)  # log(λ_n/λ_1) = −α log n


def test_power_law_fit_recovers_a_noisy_exponent_within_its_stderr():
    rng = np.random.default_rng(0)
    n = np.arange(1, 801, dtype=float)
    for alpha in (0.8, 1.0, 2.0):
        # noise well below the gap between neighbours (α/n), so the order is kept
        eigs = n ** -alpha * (1 + 1e-3 * rng.standard_normal(n.size))
        eigs[0] = 1.0  # λ_1 exact: the normalisation adds no offset
        fit = R.power_law_fit(eigs, R.NOISE_WINDOW)
        assert fit.n_points == 90 and fit.stderr > 0
        assert abs(fit.alpha - alpha) < 3 * fit.stderr
        assert np.all(np.diff(eigs[:101]) < 0)  # in the window: no reordering
        # the same fit by numpy's least squares (slope of log λ_n on log n)
        k = np.arange(11, 101)
        slope = np.polyfit(np.log(k), np.log(eigs[10:100]), 1)[0]
        assert fit.alpha == pytest.approx(-slope, rel=1e-9)


def test_power_law_fit_clips_the_window_and_refuses_too_few_points():
    n = np.arange(1, 129, dtype=float)
    # a rank-deficient spectrum: 128 positive values, then zeros at rounding level
    eigs = np.concatenate([n ** -1.5, [1e-19, -3e-19, 0.0, 0.0]])
    fit = R.power_law_fit(eigs)
    assert (fit.n_last, fit.n_points, fit.clipped) == (128, 118, True)
    assert fit.alpha == pytest.approx(1.5, abs=1e-10)
    few = R.power_law_fit(n[:12] ** -1.0)
    assert math.isnan(few.alpha) and few.n_points == 2 and "at least 3" in few.reason
    d = few.to_dict()
    assert d["alpha"] is None and d["reason"] == few.reason
    assert R.power_law_fit(np.zeros(20)).reason


def test_covariance_spectrum_matches_numpy_cov():
    rng = np.random.default_rng(1)
    for n, d in ((50, 8), (9, 20)):  # D < N (scatter) and D > N (Gram)
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 5.0
        got = R.covariance_spectrum(x)
        want = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
        assert got.shape == (d,) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * want[0])
    with pytest.raises(ValueError, match="N >= 2"):
        R.covariance_spectrum(np.ones((1, 3)))


def test_white_noise_probe_is_seeded():
    a, b = R.white_noise_probe(4, (3, 2, 2), 7), R.white_noise_probe(4, (3, 2, 2), 7)
    assert a.shape == (4, 3, 2, 2) and torch.equal(a, b)
    assert not torch.equal(a, R.white_noise_probe(4, (3, 2, 2), 8))


# ------------------------------------------------------------------------- Jacobian


def test_exact_jacobian_matches_autograd_functional():
    net = mlp()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    got = jacobian_frobenius_sq(net, x)
    assert got.shape == (4,) and not got.requires_grad
    torch.testing.assert_close(got, exact_sq(net, x), rtol=1e-5, atol=1e-6)
    # image-shaped inputs, a conv: the output is flattened per sample
    torch.manual_seed(2)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh())
    img = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(jacobian_frobenius_sq(conv, img), exact_sq(conv, img),
                               rtol=1e-5, atol=1e-6)


def test_projection_estimate_is_unbiased_per_sample():
    net = mlp(d_out=5)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    exact = jacobian_frobenius_sq(net, x)
    draws = torch.stack([
        jacobian_frobenius_sq(net, x, projections=2,
                              generator=torch.Generator().manual_seed(s))
        for s in range(300)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert torch.all((mean - exact).abs() < 4 * se), (mean, exact, se)
    # a batch-wide normalisation (the reference's bug) would shrink it ~B-fold: not here
    assert torch.all(mean > 0.8 * exact)


def test_penalty_gradient_matches_finite_differences():
    net = mlp(d_in=3, hidden=4, d_out=2, dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def penalty() -> torch.Tensor:
        return jacobian_frobenius_sq(net, x, create_graph=True).mean()

    net.zero_grad()
    penalty().backward()
    h = 1e-6
    assert net[0].weight.grad is not None
    for p in net.parameters():
        # the output bias does not enter the Jacobian: no gradient (None) is a zero one
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            flat = p.data.view(-1)
            old = flat[i].item()
            flat[i] = old + h
            up = jacobian_frobenius_sq(net, x).mean().item()
            flat[i] = old - h
            down = jacobian_frobenius_sq(net, x).mean().item()
            flat[i] = old
            fd.view(-1)[i] = (up - down) / (2 * h)
        torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_jacobian_rejects_bad_projections():
    with pytest.raises(ValueError, match="projections"):
        jacobian_frobenius_sq(mlp(), torch.zeros(2, 6), projections=0)


# ------------------------------------------------------------------------- layers


def test_layer_activations_hook_the_named_module_and_the_head_input():
    model = Tiny()
    x = torch.rand(10, 3, 2, 2)
    feats = model.backbone(x).detach().double().numpy()
    got = R.layer_activations(model, x, None, batch_size=3)
    assert got.dtype == np.float64 and got.shape == (10, 6)
    np.testing.assert_allclose(got, feats, rtol=1e-6)
    np.testing.assert_allclose(R.layer_activations(model, x, R.HEAD_INPUT), feats, rtol=1e-6)
    pre = model.backbone[1](x.flatten(1)).detach().double().numpy()
    np.testing.assert_allclose(R.layer_activations(model, x, "backbone.1", 4), pre, rtol=1e-6)
    assert model.training  # the mode of every module is restored


def test_default_representation_layer_and_layer_errors():
    assert R.default_representation_layer(Tiny()) is None
    assert R.default_representation_layer(Tiny(representation_layer="1")) == "backbone.1"
    with pytest.raises(ConfigError, match=r"'nope' is not a module.*head-input.*backbone\.1"):
        R.layer_activations(Tiny(), torch.rand(2, 3, 2, 2), "nope")
    with pytest.raises(ConfigError, match="no 'head'"):
        R.layer_activations(mlp(), torch.rand(2, 6), None)


def test_jacobian_norms_of_a_layer():
    model = Tiny()
    x = torch.rand(5, 3, 2, 2)
    res = R.jacobian_norms(model, x, "backbone.2", batch_size=2)
    want = exact_sq(lambda v: model.backbone(v), x).sqrt().double().numpy()
    assert res.projections is None and res.method == "exact" and res.output_dim == 6
    np.testing.assert_allclose(res.norms, want, rtol=1e-5)
    est = R.jacobian_norms(model, x, None, projections=3, seed=1)
    assert est.projections == 3 and "3 random projections" in est.method
    again = R.jacobian_norms(model, x, None, projections=3, seed=1)
    np.testing.assert_array_equal(est.norms, again.norms)  # seeded
    s = res.summary()
    assert s["median"] == pytest.approx(float(np.median(want)), rel=1e-5)
    assert R.resolve_projections("auto", 256) is None
    assert R.resolve_projections("auto", 257) == R.AUTO_PROJECTIONS
    with pytest.raises(ConfigError, match="--projections"):
        R.resolve_projections(-1, 10)


# ------------------------------------------------------------------------- critical ε


class Linear(nn.Module):
    """logits = W·flatten(x) + b on (N, 1, 2, 2) images: its gradient is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 4, generator=g) * 3)
            self.fc.bias.copy_(torch.randn(3, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(n, 1, 2, 2, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _brute_force(model: nn.Module, x, y, grid, perturb):
    """Every ε for every image, one image at a time; the first ε that flips it."""
    with torch.no_grad():
        correct = [i for i in range(len(x)) if model(x[i:i + 1]).argmax(1).item() == y[i]]
    crit_eps, crit_norm = [], []
    for i in correct:
        ce, cn = math.inf, math.inf
        for eps in grid:
            adv = perturb(i, eps)
            with torch.no_grad():
                if model(adv).argmax(1).item() != y[i]:
                    ce, cn = eps, float((adv - x[i:i + 1]).norm())
                    break
        crit_eps.append(ce)
        crit_norm.append(cn)
    return np.array(correct), np.array(crit_eps), np.array(crit_norm)


def _check(res: R.CriticalResult, correct, crit_eps, crit_norm, grid) -> None:
    np.testing.assert_array_equal(res.indices, correct)
    np.testing.assert_array_equal(res.crit_eps, crit_eps)
    np.testing.assert_allclose(res.crit_norm, crit_norm, rtol=1e-5)
    want = [float(np.mean(~(crit_eps <= e))) for e in grid]  # not flipped at or below ε
    np.testing.assert_allclose(res.relative_accuracy, want)


def test_critical_noise_matches_brute_force():
    model, (x, y) = Linear(), _data()
    grid = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))  # the documented draw
    oracle = _brute_force(model, x, y, grid,
                          lambda i, e: (x[i:i + 1] + e * xi[i:i + 1]).clamp(0, 1))
    res = R.critical_perturbations(model, x, y, "noise", grid, seed=9, batch_size=7)
    _check(res, *oracle, grid)
    assert res.n_images == 40 and res.num_classes == 3 and res.steps is None


def test_critical_fgsm_matches_brute_force():
    model, (x, y) = Linear(), _data()
    grid = [0.01, 0.03, 0.1, 0.2, 0.4, 1.0]
    w, b = model.fc.weight.detach(), model.fc.bias.detach()

    def fgsm(i: int, eps: float) -> torch.Tensor:
        xi = x[i].flatten()
        p = torch.softmax(w @ xi + b, 0)
        grad = w.T @ (p - F.one_hot(y[i], 3).float())  # ∇ₓ CE of a linear model
        return (xi + eps * grad.sign()).clamp(0, 1).view(1, 1, 2, 2)

    res = R.critical_perturbations(model, x, y.view(-1), "fgsm", grid, batch_size=5)
    _check(res, *_brute_force(model, x, y, grid, fgsm), grid)
    # labels as one-hot rows give the same result
    onehot = R.critical_perturbations(model, x, F.one_hot(y, 3).float(), "fgsm", grid)
    np.testing.assert_array_equal(onehot.crit_eps, res.crit_eps)


def test_critical_pgd_attacks_only_the_images_not_flipped_yet_without_changing_them():
    model, (x, y) = Linear(), _data(20)
    grid = [0.02, 0.1, 0.3, 1.0]

    def pgd(i: int, eps: float) -> torch.Tensor:
        attack = PGD(model, eps, alpha=eps / 4, steps=5, random_start=False, grad="exact")
        return attack(x[i:i + 1], y[i:i + 1])

    res = R.critical_perturbations(model, x, y, "pgd", grid, steps=5, batch_size=6)
    _check(res, *_brute_force(model, x, y, grid, pgd), grid)
    assert res.steps == 5 and res.never_flipped == 0.0
    s = res.summary()
    assert s["falls_to_chance"] is True and s["accuracy"][-1] == 0.0
    assert s["median_crit_norm"] == pytest.approx(float(np.median(res.crit_norm)))


def test_an_unbreakable_model_is_reported_as_never_flipped():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[1.0, 0.0, 0.0]]).repeat(len(x), 1) + 0 * self.w

    x, _ = _data(6)
    res = R.critical_perturbations(Constant(), x, torch.zeros(6, dtype=torch.long), "noise",
                                   [0.1, 1.0])
    s = res.summary()
    assert s["never_flipped"] == 1.0 and s["median_crit_norm"] is None
    assert s["falls_to_chance"] is False and s["crit_norm"] == [None] * 6
    assert any("never misclassified" in n for n in res.notes)


def test_critical_option_errors():
    model, (x, y) = Linear(), _data(4)
    with pytest.raises(ConfigError, match="ascending"):
        R.critical_perturbations(model, x, y, "fgsm", [0.2, 0.1])
    with pytest.raises(ConfigError, match="unknown attack"):
        R.critical_perturbations(model, x, y, "cw", [0.1])
    grid = R.default_eps_grid("pgd")
    assert len(grid) == 24 and grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(1)
    assert R.default_eps_grid("noise", 5)[-1] == pytest.approx(10.0)


# ------------------------------------------------------------------------- plots


def test_representation_plots_write_pngs(tmp_path):
    n = np.arange(1, 200, dtype=float)
    good = R.power_law_fit(n ** -1.2)
    bad = R.power_law_fit(n[:5])
    spectra = {"kh": {"data": n ** -1.2, "fit": good, "noise": n ** -0.9,
                      "noise_fit": R.power_law_fit(n ** -0.9, R.NOISE_WINDOW),
                      "input": n ** -2.0, "input_fit": None},
               "bp": {"data": n[:5] ** -1.0, "fit": bad.to_dict(), "noise": None}}
    written = [
        plots.power_law_plot(tmp_path / "p.png", spectra),
        plots.jacobian_histogram_plot(tmp_path / "j.png",
                                      {"kh": [0.1, 0.2, np.inf], "bp": [30.0, 40.0]}),
        plots.critical_norm_boxplot(tmp_path / "c.png",
                                    {"kh": {"noise": [1.0, None, 2.0], "fgsm": [0.3]},
                                     "bp": {"noise": [np.inf]}}),
        plots.critical_accuracy_plot(tmp_path / "a.png",
                                     {"kh": {"pgd": ([0.1, 1.0], [0.5, 0.0])}}),
        plots.critical_vs_accuracy_plot(tmp_path / "v.png",
                                        {"kh": {"accuracy": 0.5, "pgd": 1.0},
                                         "bp": {"accuracy": None, "pgd": 2.0}}),
    ]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
