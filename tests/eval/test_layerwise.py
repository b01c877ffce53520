"""Layer-wise diagnostics (retrieval_bio.eval.layerwise) against independent oracles: hand
computations of the formulas on hand-run layers, and the dense matrix of a small circular conv
for the FFT singular values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval_bio.eval import layerwise as lw
from retrieval_bio.eval import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _two_layer(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, padding=1, bias=bias)).double()


def _by_hand(net: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Conv outputs ("0", "2") and conv inputs computed without the model's forward."""
    c0, c2 = net[0], net[2]
    with torch.no_grad():
        f0 = F.conv2d(x, c0.weight, c0.bias, padding=1)
        a0 = torch.clamp(f0, min=0)
        f2 = F.conv2d(a0, c2.weight, c2.bias, padding=1)
    return {"out0": f0, "out2": f2, "in0": x, "in2": a0}


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 6, 6, generator=g, dtype=torch.float64)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------------------------------ hooks


def test_layer_outputs_match_hand_run_layers_and_inputs():
    net, x = _two_layer(), _images()
    hand = _by_hand(net, x)
    out = lw.layer_outputs(net, x)
    assert list(out) == ["0", "2"]
    torch.testing.assert_close(out["0"], hand["out0"])
    torch.testing.assert_close(out["2"], hand["out2"])
    inp = lw.layer_outputs(net, x, where="input")
    torch.testing.assert_close(inp["0"], hand["in0"])
    torch.testing.assert_close(inp["2"], hand["in2"])
    relu = lw.layer_outputs(net, x, kinds=nn.ReLU)
    torch.testing.assert_close(relu["1"], hand["in2"])


def test_outputs_survive_a_later_inplace_relu():
    net = _two_layer()
    net[1] = nn.ReLU(inplace=True)  # rewrites the first conv's output in place
    x = _images(2)
    out = lw.layer_outputs(net, x)
    torch.testing.assert_close(out["0"], _by_hand(net, x)["out0"])
    assert (out["0"] < 0).any()


def test_module_called_twice_keeps_last_call():
    conv = nn.Conv2d(3, 3, 1).double()
    net = nn.Sequential(conv, conv)  # one module, two calls
    x = _images(2)
    out = lw.layer_outputs(net, x)
    assert list(out) == ["0"]
    with torch.no_grad():
        torch.testing.assert_close(out["0"], conv(conv(x)))


def test_conv_subclasses_are_hooked():
    class MyConv(nn.Conv2d):
        pass

    from retrieval_bio.rules import convert

    net = nn.Sequential(MyConv(3, 2, 3), nn.Conv2d(2, 2, 1)).double()
    convert(net, "fa")
    assert type(net[1]).__name__ == "FeedbackConv2d"
    out = lw.layer_outputs(net, _images(2))
    assert list(out) == ["0", "1"]
    assert out["1"].shape == (2, 2, 4, 4)


def test_hooks_removed_and_modes_restored():
    net, x = _two_layer(), _images(2)
    net.train()
    net[2].eval()  # a frozen sub-module must stay in eval, the rest in train
    seen = []

    class Spy(nn.Module):
        def forward(self, t):
            seen.append(self.training)
            return t

    net.append(Spy())
    lw.layer_outputs(net, x)
    lw.perturbation_to_signal(net, x, x.flip(0))
    lw.block_snr(net, x, seed=0)
    lw.activation_sparsity(net, x)
    lw.conv_spectra(net, 6)
    assert seen and not any(seen)  # the model ran in eval mode
    assert _no_hooks(net)
    assert [m.training for m in net] == [True, True, False, True]

    class Boom(nn.Module):
        def forward(self, t):
            raise RuntimeError("boom")

    net.append(Boom())
    with pytest.raises(RuntimeError, match="boom"):
        lw.layer_outputs(net, x)
    assert _no_hooks(net)
    assert net.training and not net[2].training


# -------------------------------------------------------------------------------- PSR


def _norm(v: torch.Tensor, p: float) -> float:
    v = v.flatten().tolist()
    if p == math.inf:
        return max(abs(t) for t in v)
    return sum(abs(t) ** p for t in v) ** (1.0 / p)


def test_psr_matches_hand_computation():
    net, x = _two_layer(), _images(5)
    g = torch.Generator().manual_seed(2)
    x_adv = (x + 0.03 * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1)).clamp(0, 1)
    clean, adv = _by_hand(net, x), _by_hand(net, x_adv)
    res = lw.perturbation_to_signal(net, x, x_adv, batch_size=2)
    assert set(res) == {"0", "2"}
    for layer in ("0", "2"):
        f, fa = clean[f"out{layer}"], adv[f"out{layer}"]
        r = res[layer]
        assert r["n_images"] == 5 and r["n_skipped"] == 0
        for key, p in (("l1", 1.0), ("l2", 2.0), ("linf", math.inf)):
            want = [_norm(fa[i] - f[i], p) / _norm(f[i], p) for i in range(5)]
            np.testing.assert_allclose(r["psr"][key], want, rtol=1e-10)
            assert r["mean"][key] == pytest.approx(sum(want) / 5, rel=1e-10)
            # mean before the log
            assert r["db"][key] == pytest.approx(20 * math.log10(sum(want) / 5), rel=1e-10)


def test_psr_skips_zero_signal_images():
    net = _two_layer(bias=False)
    x = _images(3)
    x[1] = 0.0  # no bias: every layer's signal is exactly zero for this image
    x_adv = (x + 0.01).clamp(0, 1)
    res = lw.perturbation_to_signal(net, x, x_adv, p=(2,))
    for r in res.values():
        assert r["n_skipped"] == 1
        assert r["psr"]["l2"].shape == (2,)
        assert np.isfinite(r["psr"]["l2"]).all()


def test_psr_ratio():
    a = {"0": {"mean": {"l2": 2.0}}, "1": {"mean": {"l2": 1.0}}}
    b = {"0": {"mean": {"l2": 0.5}}, "1": {"mean": {"l2": 0.0}}}
    r = lw.psr_ratio(a, b)
    assert r["0"] == 4.0 and math.isnan(r["1"])


# -------------------------------------------------------------------------------- SNR


def test_block_snr_matches_hand_computation():
    net, x = _two_layer(), _images(3)
    sigma, draws = 0.2, 2
    res = lw.block_snr(net, x, sigma=sigma, draws=draws,
                       generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    clean = _by_hand(net, x)
    ratios: dict[str, list[float]] = {"0": [], "2": []}
    for _ in range(draws):
        noisy = (x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
        nz = _by_hand(net, noisy)
        for layer in ratios:
            f, fn = clean[f"in{layer}"], nz[f"in{layer}"]
            for i in range(x.shape[0]):
                ratios[layer].append(_norm(f[i], 2) ** 2 / _norm(fn[i] - f[i], 2) ** 2)
    for layer, rs in ratios.items():
        # expectation inside the log, power dB
        assert res[layer] == pytest.approx(10 * math.log10(sum(rs) / len(rs)), rel=1e-10)
    # batching changes nothing but memory when there is one chunk per draw order
    again = lw.block_snr(net, x, sigma=sigma, draws=draws, seed=7, batch_size=3)
    assert again == pytest.approx(res, rel=1e-12)


def test_block_snr_uses_only_the_passed_generator():
    net, x = _two_layer(), _images(2)
    state = torch.get_rng_state()
    a = lw.block_snr(net, x, generator=torch.Generator().manual_seed(3))
    b = lw.block_snr(net, x, generator=torch.Generator().manual_seed(3))
    c = lw.block_snr(net, x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert a == b
    assert a != c
    assert lw.block_snr(net, x, seed=3) == a  # seed= is a fresh CPU generator
    g = torch.Generator().manual_seed(3)
    lw.block_snr(net, x, generator=g)
    assert not torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())


# --------------------------------------------------------------------------- sparsity


def _s_numpy(a: np.ndarray) -> float:
    n = a.size
    return ((np.abs(a).sum() / np.sqrt((a ** 2).sum())) ** 2 - 1) / (n - 1)


def test_sparsity_extremes_and_zero_skipped():
    n = 6
    one_hot = torch.zeros(n, dtype=torch.float64)
    one_hot[2] = -3.0
    equal = torch.tensor([0.5, -0.5, 0.5, 0.5, -0.5, 0.5], dtype=torch.float64)
    zero = torch.zeros(n, dtype=torch.float64)
    s = lw.sparsity_index(torch.stack([one_hot, equal, zero]))
    assert s[0].item() == pytest.approx(0.0, abs=1e-12)  # a single nonzero entry
    assert s[1].item() == pytest.approx(1.0, abs=1e-12)  # all entries equal in magnitude
    assert math.isnan(s[2].item())

    # as activations: channels = the vector, three locations (one-hot, equal, zero)
    act = torch.stack([one_hot, equal, zero], dim=1).reshape(1, n, 1, 3)
    ident = nn.Sequential(nn.Identity())
    res = lw.activation_sparsity(ident, act, kinds=nn.Identity)
    assert res["0"] == pytest.approx(0.5, abs=1e-12)  # zero location skipped, not counted as 0
    only_hot = torch.stack([one_hot, zero], dim=1).reshape(1, n, 1, 2)
    assert lw.activation_sparsity(ident, only_hot, kinds=nn.Identity)["0"] == pytest.approx(0)


def test_activation_sparsity_matches_per_location_loop():
    net, x = _two_layer(), _images(2)
    hand = _by_hand(net, x)
    res = lw.activation_sparsity(net, x, batch_size=1)
    for layer in ("0", "2"):
        f = hand[f"out{layer}"].numpy()
        vals = [_s_numpy(f[i, :, r, c]) for i in range(f.shape[0])
                for r in range(f.shape[2]) for c in range(f.shape[3])]
        assert res[layer] == pytest.approx(float(np.mean(vals)), rel=1e-10)


def test_filter_sparsity_of_hand_made_kernel():
    conv = nn.Conv2d(2, 4, 2, bias=False)  # d = 2·2·2 = 8
    w = torch.zeros(4, 2, 2, 2)
    w[0, 1, 0, 1] = 5.0  # one nonzero tap
    w[1] = torch.tensor([1.0, -1.0]).repeat(4).reshape(2, 2, 2)  # all equal magnitude
    w[3, 0, 0, 0], w[3, 1, 1, 1] = 2.0, -2.0  # two equal taps of 8: (2 - 1)/7
    with torch.no_grad():
        conv.weight.copy_(w)
    s = lw.filter_sparsity(nn.Sequential(conv))["0"]
    assert s[0] == pytest.approx(0.0, abs=1e-12)
    assert s[1] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(s[2])  # all-zero filter
    assert s[3] == pytest.approx(1 / 7, abs=1e-12)


# -------------------------------------------------------------------- singular values


def _dense_svdvals(conv: nn.Conv2d, c_in: int, h: int, w: int) -> torch.Tensor:
    """Singular values of the conv's matrix, built column by column from basis images."""
    basis = torch.eye(c_in * h * w, dtype=torch.float64).reshape(-1, c_in, h, w)
    with torch.no_grad():
        cols = conv(basis).reshape(basis.shape[0], -1)  # row j = image of basis vector j
    return torch.linalg.svdvals(cols.T).sort(descending=True).values


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "hw", "stride", "dilation", "groups"),
    [
        (2, 3, 3, (5, 5), 1, 1, 1),   # the basic case
        (3, 2, 3, (4, 6), 1, 1, 1),   # C_out < C_in, H != W
        (2, 3, 3, (6, 6), 2, 1, 1),   # stride: aliased frequencies
        (4, 4, 3, (4, 4), 1, 1, 2),   # groups
        (2, 2, 3, (7, 7), 1, 2, 1),   # dilation
        (2, 3, 3, (2, 2), 1, 1, 1),   # kernel larger than the input wraps around
        (2, 3, 1, (4, 4), 2, 1, 1),   # 1x1 strided (a ResNet shortcut)
    ],
)
def test_fft_singular_values_match_dense_circular_conv(c_in, c_out, k, hw, stride, dilation,
                                                       groups):
    torch.manual_seed(0)
    pad = dilation * (k - 1) // 2
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dilation,
                     groups=groups, bias=False, padding_mode="circular").double()
    want = _dense_svdvals(conv, c_in, *hw)
    got = lw.conv_singular_values(conv.weight, hw, stride, dilation=dilation, groups=groups)
    # the dense matrix has min(rows, cols) values; the FFT gives the same count
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_spectra_of_weight_normalised_conv_use_the_applied_kernel():
    from retrieval_bio.models.hah import WNConv2d

    torch.manual_seed(0)
    conv = WNConv2d(2, 3, 3, padding=1, bias=False, padding_mode="circular").double()
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64).view(3, 1, 1, 1))
    want = _dense_svdvals(conv, 2, 5, 5)  # the map its forward computes
    got = lw.conv_spectra(nn.Sequential(conv), 5, in_channels=2, normalise=False)["0"]
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-10)
    # the raw weight would give a different spectrum (the per-filter scales differ)
    raw = lw.conv_spectra(nn.Sequential(conv), 5, in_channels=2, normalise=False,
                          weight_fn=lambda m: m.weight)["0"]
    assert not np.allclose(raw, got)


def test_fft_singular_values_reject_stride_not_dividing():
    with pytest.raises(ValueError, match="does not divide"):
        lw.conv_singular_values(torch.randn(2, 2, 3, 3), (5, 5), 2)


def test_conv_spectra_track_each_layers_input_size():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 2, 3, stride=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spectra = lw.conv_spectra(net, 8)
    # the stride-3 conv sees 4x4: no exact FFT spectrum, left out with a warning
    assert set(spectra) == {"0", "2"}
    assert any("stride" in str(w.message) for w in caught)
    assert spectra["0"].shape == (8 * 8 * 3,)
    assert spectra["2"].shape == (4 * 4 * 4,)
    want = lw.conv_singular_values(net[2].weight, 4)
    np.testing.assert_allclose(spectra["2"], (want / want[0]).numpy(), rtol=1e-12)
    assert spectra["0"][0] == 1.0 and np.all(np.diff(spectra["0"]) <= 0)
    assert _no_hooks(net)
    raw = lw.conv_spectra(net[:3], 8, normalise=False,
                          weight_fn=lw.filter_normalised_weight)
    unit = lw.filter_normalised_weight(net[0])
    assert torch.allclose(unit.flatten(1).norm(dim=1), torch.ones(4), atol=1e-5)
    np.testing.assert_allclose(raw["0"], lw.conv_singular_values(unit, 8).numpy())


def test_bn_statistics():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.weight.copy_(torch.tensor([0.5, 0.25, 2.0]))
    stats = lw.bn_statistics(nn.Sequential(nn.Conv2d(3, 3, 1), bn,
                                           nn.BatchNorm2d(3, affine=False)))
    assert list(stats) == ["1", "2"]
    np.testing.assert_array_equal(stats["1"]["running_mean"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(stats["1"]["running_var"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(stats["1"]["weight"], [0.5, 0.25, 2.0])
    np.testing.assert_array_equal(stats["1"]["bias"], [0.0, 0.0, 0.0])
    assert stats["2"]["weight"] is None and stats["2"]["running_mean"] is not None


# ------------------------------------------------------------------------------ plots


def test_plots_write_png(tmp_path):
    net, x = _two_layer(), _images(3)
    x_adv = (x + 0.02).clamp(0, 1)
    psr = lw.perturbation_to_signal(net, x, x_adv)
    snr = lw.block_snr(net, x, seed=0)
    sp = lw.activation_sparsity(net, x)
    spectra = lw.conv_spectra(net, 6)
    other = lw.perturbation_to_signal(net, x, (x - 0.02).clamp(0, 1))
    paths = [
        plots.psr_plot(tmp_path / "psr.png", psr),
        plots.psr_plot(tmp_path / "psr2.png", {"NT": psr, "AT": other}, p="linf"),
        plots.psr_histogram_plot(tmp_path / "hist.png", {"NT": psr, "AT": other}),
        plots.snr_plot(tmp_path / "snr.png", {"a": snr, "b": {"0": math.inf}}, sigma=0.1),
        plots.sparsity_plot(tmp_path / "sp.png", sp),
        plots.spectrum_plot(tmp_path / "spec.png", {"a": spectra, "b": spectra}),
        plots.layer_histograms_plot(tmp_path / "f.png", lw.filter_sparsity(net),
                                    "s", "filter sparsity"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG
