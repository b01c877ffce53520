"""Backward of converted layers: dx = analytic product with B, dW/db = plain autograd."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from retrieval_bio import rules

SIGN_RULES = ("usf", "frsf", "brsf")
NON_BP = ("fa",) + SIGN_RULES
CONV = dict(stride=2, padding=1, dilation=2, groups=2)


def _linear(bias: bool) -> nn.Linear:
    return nn.Linear(6, 4, bias=bias).double()


def _conv(bias: bool) -> nn.Conv2d:
    return nn.Conv2d(4, 6, 3, bias=bias, **CONV).double()


def _run(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(dx, dW, db) of ``<layer(x), g>``."""
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    layer(x).backward(g)
    db = None if layer.bias is None else layer.bias.grad.clone()
    return x.grad, layer.weight.grad.clone(), db


@pytest.mark.parametrize("rule", NON_BP)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward(rule: str, bias: bool) -> None:
    torch.manual_seed(0)
    ref = _linear(bias)
    layer = rules.convert(copy.deepcopy(ref), rule, seed=3)
    x = torch.randn(2, 3, 6, dtype=torch.float64)  # leading batch dims are allowed
    g = torch.randn(2, 3, 4, dtype=torch.float64)
    dx, dw, db = _run(layer, x, g)
    _, dw_ref, db_ref = _run(ref, x, g)
    b = rules.feedback(layer)
    assert b.shape == layer.weight.shape
    torch.testing.assert_close(dx, g @ b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(db, db_ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(dx, g @ layer.weight.detach())  # really not BP


@pytest.mark.parametrize("rule", NON_BP)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_backward(rule: str, bias: bool) -> None:
    torch.manual_seed(1)
    ref = _conv(bias)
    layer = rules.convert(copy.deepcopy(ref), rule, seed=3)
    x = torch.randn(3, 4, 11, 11, dtype=torch.float64)
    g = torch.randn_like(ref(x))
    dx, dw, db = _run(layer, x, g)
    _, dw_ref, db_ref = _run(ref, x, g)
    b = rules.feedback(layer)
    expected = torch.nn.grad.conv2d_input(x.shape, b, g, **CONV)
    torch.testing.assert_close(dx, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(db, db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding,mode,k", [("same", "zeros", 4), (1, "reflect", 3),
                                            (2, "circular", 3)])
def test_conv_padding_modes(padding: int | str, mode: str, k: int) -> None:
    """Non-zero padding modes and (asymmetric) 'same': dx = pad^T conv2d_input(B, g)."""
    torch.manual_seed(2)
    ref = nn.Conv2d(2, 3, k, padding=padding, padding_mode=mode).double()
    layer = rules.convert(copy.deepcopy(ref), "frsf")
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    g = torch.randn_like(ref(x))
    dx, dw, _ = _run(layer, x, g)
    _, dw_ref, _ = _run(ref, x, g)
    # Independent oracle: explicit pad (total dilation*(k-1) split left-small for 'same').
    if padding == "same":
        lo, hi = (k - 1) // 2, k - 1 - (k - 1) // 2
        pads, pad_mode = [lo, hi, lo, hi], "constant"
    else:
        pads, pad_mode = [padding] * 4, mode
    x_leaf = x.clone().requires_grad_(True)
    xp = F.pad(x_leaf, pads, mode=pad_mode)
    dxp = torch.nn.grad.conv2d_input(xp.shape, rules.feedback(layer), g)
    (xp * dxp).sum().backward()
    torch.testing.assert_close(dx, x_leaf.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", NON_BP)
def test_weight_gradients_match_finite_differences(rule: str) -> None:
    """gradcheck on (W, b) of the rule's path: the parameter gradients are exact."""
    torch.manual_seed(3)
    for layer, x in ((_linear(True), torch.randn(3, 6, dtype=torch.float64)),
                     (_conv(True), torch.randn(2, 4, 9, 9, dtype=torch.float64))):
        rules.convert(layer, rule)
        w = layer.weight.detach().clone().requires_grad_(True)
        b = layer.bias.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda w, b, layer=layer, x=x: functional_call(layer, {"weight": w, "bias": b}, x),
            (w, b), fast_mode=True)


def test_exact_path_matches_finite_differences() -> None:
    """Inside exact_gradients a converted layer is plain autograd: gradcheck on x, W, b."""
    torch.manual_seed(4)
    layer = rules.convert(_conv(True), "usf")
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    with rules.exact_gradients(layer):
        assert torch.autograd.gradcheck(
            lambda x, w, b: functional_call(layer, {"weight": w, "bias": b}, x), (x, w, b),
            fast_mode=True)


def _expected_feedback(layer: nn.Module, rule: str, scale: str) -> torch.Tensor:
    """B written from SPEC §2 directly, from the layer's W and its random parts."""
    w = layer.weight.detach()
    if rule == "fa":
        tilde = layer.R
    elif rule == "usf":
        tilde = torch.sign(w)
    else:
        tilde = layer.M * torch.sign(w)
    if scale == "none":
        return tilde
    if scale == "init":
        receptive = w[0, 0].numel() if w.dim() > 2 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        # BioTorch's magnitude: σ = sqrt(2 / fan sum) for FA and uSF, the xavier bound
        # a = sqrt(6 / fan sum) for the U[0, 1] magnitudes of frSF / brSF
        return tilde * math.sqrt((2.0 if rule in ("fa", "usf") else 6.0) / (fan_in + fan_out))
    return tilde * (w.norm() / tilde.norm())


@pytest.mark.parametrize("rule", NON_BP)
@pytest.mark.parametrize("scale", ["norm", "none", "init"])
def test_feedback_matrix_formula(rule: str, scale: str) -> None:
    torch.manual_seed(5)
    for layer in (_linear(True), _conv(False)):
        rules.convert(layer, rule, scale=scale)
        b = rules.feedback(layer)
        torch.testing.assert_close(b, _expected_feedback(layer, rule, scale))
        if scale == "norm":
            torch.testing.assert_close(b.norm(), layer.weight.detach().norm())
        if rule != "fa":
            m = getattr(layer, "M", None)
            if m is not None:
                assert 0 <= m.min() and m.max() <= 1


def test_layers_get_different_random_parts() -> None:
    model = rules.convert(nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)), "frsf", seed=0)
    assert not torch.equal(model[0].M, model[1].M)
    again = rules.convert(nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)), "frsf", seed=0)
    assert torch.equal(model[1].M, again[1].M)


def test_mixed_precision_cpu_bfloat16() -> None:
    """Under autocast the rule's dx is g @ B in bf16 and gradients come back in float32."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 5))
    rules.convert(model, "frsf")
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    captured = {}
    model[2].register_full_backward_hook(lambda m, gi, go: captured.update(g=go[0]))
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    for p in model.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    # The head's input gradient is g @ B rounded as bf16 matmul would.
    flat_grad = {}
    h = model[1](model[0](x.detach())).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = model[2](h)
    h.register_hook(lambda t: flat_grad.update(dx=t))
    o.float().sum().backward()
    ones = torch.ones(2, 5)
    torch.testing.assert_close(flat_grad["dx"], ones @ rules.feedback(model[2]),
                               rtol=2e-2, atol=2e-2)
