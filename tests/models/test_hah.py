"""HaH blocks (seed 004 ch. 5) against independent computations: the HaH loss by sorting
each location by hand, weight normalisation by normalising filters one by one, divisive
normalisation by unfolding 3×3 windows, the threshold by top-k masks, and the no-cheating
rule by autograd over every parameter of a whole model."""

from __future__ import annotations

import copy
import math
import warnings
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import retrieval_bio.models.hah as hah  # registers the hah-* backbones
from retrieval_bio.learners.autograd import auxiliary_losses as learner_auxiliary_losses
from retrieval_bio.models import BackboneOptionError, WeightsNotFoundError, create_model
from retrieval_bio.models.hah import (
    PAPER_ALPHAS,
    ChannelThreshold,
    DivisiveNormalization,
    HaHBlock,
    WNConv2d,
    hah_loss,
)
from retrieval_bio.rules import convert


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: one thread is fastest and leaves the shared cores to others."""


def exact_ceil(frac: float, n: int) -> int:
    return math.ceil(Fraction(str(frac)) * n)


def exact_floor(frac: Fraction, n: int) -> int:
    return math.floor(frac * n)


def hand_hah_loss(y: torch.Tensor, k_frac: float, lam: float) -> torch.Tensor:
    """Eq 5.4 location by location: sort the channels descending, K = ⌈k_frac·N⌉."""
    n, c, h, w = y.shape
    k = exact_ceil(k_frac, c)
    terms = []
    for i in range(n):
        for r in range(h):
            for s in range(w):
                v = torch.sort(y[i, :, r, s], descending=True).values
                terms.append(v[:k].mean() - lam * v[k:].mean())
    return torch.stack(terms).mean()


def hah_model(image_size: int = 16, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model("hah-small", "classify", num_classes=10, image_size=image_size,
                        **options)


def aux_losses(model: nn.Module) -> list[torch.Tensor]:
    out = [m.auxiliary_loss() for m in model.modules() if hasattr(m, "auxiliary_loss")]
    return [t for t in out if t is not None]


# -- the HaH loss ----------------------------------------------------------------------------

@pytest.mark.parametrize("channels,k_frac,lam", [
    (13, 0.1, 0.1), (64, 0.1, 0.1), (20, 0.1, 1.0),
    (25, 0.28, 0.1),  # 0.28·25 = 7.000000000000001 in float: K must still be 7
])
def test_hah_loss_equals_a_sort_per_location(channels, k_frac, lam):
    torch.manual_seed(channels)
    y = F.relu(torch.randn(2, channels, 3, 2, dtype=torch.float64))
    got = hah_loss(y, k_frac, lam)
    assert torch.allclose(got, hand_hah_loss(y, k_frac, lam), rtol=1e-12, atol=1e-12)
    assert hah.num_winners(channels, k_frac) == exact_ceil(k_frac, channels)


def test_hah_loss_gradient_equals_the_sorted_formula_gradient():
    torch.manual_seed(3)
    y = torch.randn(2, 13, 2, 2, dtype=torch.float64).relu().requires_grad_(True)
    (g1,) = torch.autograd.grad(hah_loss(y, 0.1, 0.1), y)
    (g2,) = torch.autograd.grad(hand_hah_loss(y, 0.1, 0.1), y)
    assert torch.allclose(g1, g2, atol=1e-14)


def test_hah_block_records_minus_alpha_times_its_loss_on_the_detached_input():
    torch.manual_seed(4)
    block = HaHBlock(3, 12, alpha=0.25).double().train()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    block(x)
    w = block.conv.weight
    norms = w.flatten(1).norm(dim=1) + 1e-6
    y = F.relu(F.conv2d(x.detach(), w, padding=1) / norms.view(1, -1, 1, 1))
    expected = -0.25 * hand_hah_loss(y, 0.1, 0.1)
    got = block.auxiliary_loss()
    assert torch.allclose(got, expected, rtol=1e-12)
    gx, gw = torch.autograd.grad(got, [x, w], allow_unused=True)
    assert gx is None  # nothing reaches the block input
    (gw_ref,) = torch.autograd.grad(expected, w)
    assert torch.allclose(gw, gw_ref, rtol=1e-10, atol=1e-14)


def test_hah_gradient_reaches_only_its_own_block():
    model = hah_model().train()
    params = dict(model.named_parameters())
    x = torch.rand(4, 3, 16, 16)
    labels = torch.randint(0, 10, (4,))
    logits = model(x)  # one training forward, as a trainer makes it
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, HaHBlock)}
    assert len(blocks) == 2
    for name, block in blocks.items():
        aux = block.auxiliary_loss()
        assert aux is not None and aux.ndim == 0
        grads = torch.autograd.grad(aux, list(params.values()), allow_unused=True,
                                    retain_graph=True)
        own = f"{name}.conv.weight"
        for pname, g in zip(params, grads, strict=True):
            if pname == own:
                assert g is not None and g.abs().sum() > 0, pname
            else:
                assert g is None or not g.any(), f"{name}'s HaH loss reaches {pname}"
    # all blocks' terms together, as the autograd learner sums them: still only the HaH convs
    total = learner_auxiliary_losses(model)
    assert torch.equal(total, torch.stack(aux_losses(model)).sum())
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True,
                                retain_graph=True)
    touched = {p for p, g in zip(params, grads, strict=True) if g is not None and g.any()}
    assert touched == {f"{n}.conv.weight" for n in blocks}
    # the task loss still trains every conv, HaH ones included
    ce = F.cross_entropy(logits, labels)
    convs = {n: m.weight for n, m in model.named_modules() if isinstance(m, WNConv2d)}
    assert len(convs) == 4
    for n, g in zip(convs, torch.autograd.grad(ce, list(convs.values())), strict=True):
        assert g.abs().sum() > 0, n


def test_auxiliary_loss_only_after_a_training_forward():
    model = hah_model()
    x = torch.rand(2, 3, 16, 16)
    model.train()
    model(x)
    assert len(aux_losses(model)) == 2
    clone = copy.deepcopy(model)  # a model holding a step's graph can still be copied
    assert aux_losses(clone) == []
    model.eval()
    model(x)
    assert aux_losses(model) == []
    model.train()
    model(x)
    with torch.no_grad():
        model(x)  # e.g. re-estimating BN statistics: no graph, no stale term
    assert aux_losses(model) == []
    assert all("_aux_loss" not in k for k in model.state_dict())


# -- the block's parts ------------------------------------------------------------------------

def test_wnconv_divides_by_each_filter_norm_and_ignores_weight_scale():
    torch.manual_seed(5)
    conv = WNConv2d(3, 5, 3, padding=1, bias=False).double()
    assert isinstance(conv, nn.Conv2d)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = conv.weight.detach()
    normalised = torch.stack([w[k] / (w[k].pow(2).sum().sqrt() + 1e-6) for k in range(5)])
    out = conv(x)
    assert torch.allclose(out, F.conv2d(x, normalised, padding=1), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        conv.weight.mul_(37.0)
    assert torch.allclose(conv(x), out, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("field", ["max3", "mean"])
def test_divisive_normalization_equals_the_formula_and_ignores_input_scale(field):
    torch.manual_seed(6)
    y = F.relu(torch.randn(2, 4, 5, 6, dtype=torch.float64))
    sigma = 0.1
    if field == "max3":  # 3×3 windows by unfold; |y| ≥ 0 so zero padding equals -inf's
        win = F.unfold(F.pad(y.abs(), (1, 1, 1, 1)), 3).view(2, 4, 9, 5, 6)
        m = win.amax(2).mean(1, keepdim=True)
    else:
        m = y.mean(1, keepdim=True)
    m_max = m.flatten(1).max(1).values.view(2, 1, 1, 1)
    expected = y / (sigma * m_max + (1 - sigma) * m + 1e-7)
    dn = DivisiveNormalization(sigma, field)
    assert torch.allclose(dn(y), expected, rtol=1e-12, atol=0)
    assert torch.allclose(dn(7.5 * y), dn(y), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("keep,h,w", [
    (0.2, 8, 8),  # 13 of 64, ~20 %
    (0.3, 9, 10),  # (1 − 0.3)·90 = 62.99999999999999 in float: k must still be 63
])
def test_channel_threshold_keeps_the_top_fraction_of_each_channel(keep, h, w):
    torch.manual_seed(7)
    z = torch.randn(2, 3, h, w, dtype=torch.float64)  # continuous: no ties
    out = ChannelThreshold(keep)(z)
    hw = h * w
    n_keep = hw - exact_floor(1 - Fraction(str(keep)), hw)
    flat = z.flatten(2)
    idx = flat.topk(n_keep, dim=2).indices
    expected = torch.zeros_like(flat).scatter(2, idx, flat.gather(2, idx)).view_as(z)
    assert torch.equal(out, expected)
    assert ((out != 0).flatten(2).sum(2) == n_keep).all()


def test_channel_threshold_on_tiny_maps_and_relu_zeros():
    th = ChannelThreshold(0.2)
    z = torch.randn(3, 4, 1, 1)
    assert torch.equal(th(z), z)  # k = ⌊0.8⌋ = 0: kept whole, no kthvalue(0) crash
    two = torch.tensor([[[[1.0], [2.0]]]])  # 2×1: k = ⌊1.6⌋ = 1 → the larger one
    assert torch.equal(th(two), torch.tensor([[[[0.0], [2.0]]]]))
    # ties at 0 (a ReLU's zeros): only the positive values can survive
    sparse = torch.zeros(1, 1, 5, 5)
    sparse[0, 0, 0, :2] = torch.tensor([3.0, 1.0])
    assert torch.equal(th(sparse), sparse)  # 2 kept < 25 − 20 = 5


# -- backbones ---------------------------------------------------------------------------------

def test_hah_vgg16_shapes_and_blocks():
    torch.manual_seed(0)
    model = create_model("hah-vgg16", "classify", num_classes=10, image_size=32).train()
    blocks = [m for m in model.modules() if isinstance(m, HaHBlock)]
    assert [b.conv.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256]
    assert [b.alpha for b in blocks] == list(PAPER_ALPHAS)
    assert [hah.num_winners(b.conv.out_channels, b.k_frac) for b in blocks] == \
        [7, 7, 13, 13, 26, 26]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(isinstance(c, WNConv2d) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert model.backbone.num_features == 512
    feats = model.backbone(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 512)
    assert len(aux_losses(model)) == 6


def test_hah_vgg16_baseline_and_other_sizes():
    torch.manual_seed(0)
    base = create_model("hah-vgg16", "classify", hah_blocks=0, image_size=64).train()
    assert not any(isinstance(m, HaHBlock) for m in base.modules())
    with torch.no_grad():
        assert base.backbone(torch.rand(1, 3, 64, 64)).shape == (1, base.backbone.num_features)
    assert base.backbone.num_features == 512 * 4
    assert aux_losses(base) == []
    with pytest.warns(UserWarning, match="converge"):
        create_model("hah-vgg16", "classify", hah_blocks=8)
    with pytest.raises(BackboneOptionError):
        create_model("hah-vgg16", "classify", hah_blocks=14)
    with pytest.raises(WeightsNotFoundError):
        create_model("hah-vgg16", "classify", weights="imagenet")


@pytest.mark.parametrize("size", [4, 16])
def test_hah_small_any_size(size):
    model = hah_model(image_size=size).train()
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.backbone.num_features == 64
    assert len(aux_losses(model)) == 2
    flat = hah_model(image_size=size, hah_blocks=0).train()
    flat(torch.rand(2, 3, size, size))
    assert not any(isinstance(m, HaHBlock) for m in flat.modules())
    assert aux_losses(flat) == []


def test_rule_conversion_keeps_the_weight_normalisation():
    """Whatever ``convert`` does with a WNConv2d (today: leaves it unconverted, exact
    gradients, with a warning), its forward must still normalise."""
    model = hah_model().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(model, "frsf")
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    model.train()
    loss = F.cross_entropy(model(x), torch.tensor([1, 2])) + torch.stack(
        aux_losses(model)).sum()
    loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.any()
               for m in model.modules() if isinstance(m, nn.Conv2d))
