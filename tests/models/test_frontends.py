"""Front-end ops (quantiser, top-T, dropout) with their BPDA backward, the polarizing front end,
and how front ends compose with backbones, rules and the autograd learner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval_bio import rules
from retrieval_bio.learners.autograd import auxiliary_losses
from retrieval_bio.models import create_model
from retrieval_bio.models.frontends import (
    CoeffDropout,
    PolarizingFrontEnd,
    Quantizer,
    TopT,
    bpda,
    has_bpda_ops,
    is_stochastic,
    reseed,
    resolve_bpda,
)


def _grad(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(module(z).sum(), z)
    return g


def test_ternary_quantizer_output_and_backward_modes():
    z = torch.linspace(-1, 1, 201, dtype=torch.float64)
    q = Quantizer((-0.5, 0.5), steepness=8.0)
    out = q(z)
    assert set(out.unique().tolist()) == {-1.0, 0.0, 1.0}
    # |z| >= c keeps its sign, anything nearer 0 becomes 0 (the off-threshold points)
    inner = z.abs() < 0.5 - 1e-9
    outer = z.abs() > 0.5 + 1e-9
    assert (out[inner] == 0).all()
    assert torch.equal(out[outer], z[outer].sign())
    assert (_grad(q, z) == 0).all()  # the true gradient: the obfuscated reference
    with bpda(q, "identity"):
        assert torch.equal(_grad(q, z), torch.ones_like(z))
    with bpda(q, "smooth"):
        g = _grad(q, z)
    # d/dz ½Σ tanh(8(z ∓ 0.5)), by finite differences of the smooth staircase itself
    smooth = lambda v: 0.5 * (torch.tanh(8 * (v - 0.5)) + torch.tanh(8 * (v + 0.5)))  # noqa: E731
    h = 1e-6
    fd = (smooth(z + h) - smooth(z - h)) / (2 * h)
    torch.testing.assert_close(g, fd, atol=1e-6, rtol=1e-6)
    assert q.backward_mode == "autograd"  # restored


def test_bpda_nests_restores_and_validates():
    model = nn.Sequential(Quantizer((-0.3, 0.3), steepness=2.0), TopT(2))
    with bpda(model, "smooth"):
        assert (model[0].backward_mode, model[1].backward_mode) == ("smooth", "top_u")
        with bpda(model, {"preset": "identity", "steepness": 9.0}):
            assert model[0].backward_mode == "identity" and model[0].steepness == 9.0
        assert model[0].backward_mode == "smooth" and model[0].steepness == 2.0
    assert (model[0].backward_mode, model[1].backward_mode) == ("autograd", "autograd")
    with pytest.raises(ValueError, match="unknown BPDA"):
        resolve_bpda("straight")
    with pytest.raises(ValueError, match="quantizer"):
        resolve_bpda({"quantizer": "top_u"})


def test_top_t_keeps_t_signed_entries_and_its_backward_masks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 4, 4, generator=g, dtype=torch.float64)
    top = TopT(3, u_factor=2.0)
    y = top(x)
    nz = (y != 0).sum(1)
    assert (nz == 3).all()
    # the kept entries are the 3 largest |x| per location, sign kept (a sort as oracle)
    ranks = x.abs().argsort(1, descending=True).argsort(1)
    assert torch.equal(y, torch.where(ranks < 3, x, torch.zeros_like(x)))
    assert torch.equal(_grad(top, x), (ranks < 3).double())
    with bpda(top, {"topk": "top_u"}):
        assert torch.equal(_grad(top, x), (ranks < 6).double())
    with bpda(top, "identity"):
        assert torch.equal(_grad(top, x), torch.ones_like(x))


def test_dropout_owns_its_generator():
    x = torch.ones(2, 50, 3, 3)
    drop = CoeffDropout(0.5, seed=7)
    a, b = drop(x), drop(x)
    assert not torch.equal(a, b)  # two EOT samples see two masks
    assert set(a.unique().tolist()) <= {0.0, 1.0}  # survivors not rescaled
    drop.reseed()
    torch.manual_seed(123)  # the global RNG has no say
    assert torch.equal(drop(x), a)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    drop(x)
    assert torch.equal(torch.get_rng_state(), state)
    model = nn.Sequential(CoeffDropout(0.3, seed=1), CoeffDropout(0.3, seed=2))
    assert is_stochastic(model) and not is_stochastic(nn.Sequential(CoeffDropout(0.0)))
    reseed(model, 5)
    first = model(x)
    reseed(model, 5)
    assert torch.equal(model(x), first)


def test_polarizing_conv_is_l1_normalised_and_quantised_in_stage_3():
    fe = PolarizingFrontEnd(filters=6, threshold=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 12, 12, generator=g)
    z = fe(x)  # stage 1: continuous z
    w = fe.conv.weight
    by_hand = F.conv2d(x.mean(1, keepdim=True), w / w.abs().sum((1, 2, 3), keepdim=True),
                       padding=2)
    torch.testing.assert_close(z, by_hand)
    assert z.abs().max() <= 1 + 1e-6  # Hölder: |w·x| <= ‖w‖₁ for x in [0, 1]
    # scaling the filters does not change z (the ℓ1 normalisation)
    with torch.no_grad():
        fe.conv.weight.mul_(13.0)
    torch.testing.assert_close(fe(x), z)
    fe.set_epoch(40)
    q = fe(x)
    assert int(fe.stage) == 3 and set(q.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(q, torch.where(z >= 0.5, 1.0, torch.where(z >= -0.5, 0.0, -1.0)))


def test_bump_regularisers_have_their_minima_where_the_seed_says():
    fe = PolarizingFrontEnd(threshold=0.5, sigma1=0.35, sigma2=0.15)
    z = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    b1, b2 = fe.bump(z, 1).numpy(), fe.bump(z, 2).numpy()
    zs = z.numpy()
    # B1 penalises z near 0: its largest value at 0, its smallest at the ends ±1
    assert zs[b1.argmax()] == pytest.approx(0.0, abs=1e-9)
    assert set(np.round(zs[np.isclose(b1, b1.min())], 6)) == {-1.0, 1.0}
    # B2 penalises the thresholds ±c: maxima at ±0.5, local minima at 0 and ±1
    assert sorted(np.round(zs[np.argsort(b2)[-2:]], 3)) == [-0.5, 0.5]
    local_min = [zs[i] for i in range(1, len(zs) - 1) if b2[i] < b2[i - 1] and b2[i] < b2[i + 1]]
    assert np.allclose(local_min, [0.0])
    assert b2[0] < b2[1] and b2[-1] < b2[-2]  # falling towards the ends ±1


def test_stage_schedule_ramps_lambda_and_freezes_in_stage_3():
    fe = PolarizingFrontEnd(stage_epochs=(4, 2))
    assert [fe.stage_of(e) for e in range(8)] == [
        (1, 0.0), (1, 0.25), (1, 0.5), (1, 0.75), (2, 0.0), (2, 0.5), (3, 0.0), (3, 0.0)]
    assert [fe.is_selectable(e) for e in range(8)] == [False] * 6 + [True] * 2
    with pytest.raises(ValueError, match="stage 3"):
        fe.check_epochs(6)
    model = create_model("polar-cnn", "classify", num_classes=10, image_size=16,
                         frontend="polarizing", frontend_options={"stage_epochs": [4, 2]})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    model.train()
    for epoch in (1, 6):
        model.frontend.set_epoch(epoch)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        if epoch == 1:
            assert "frontend.conv.weight" in moved
        else:  # stage 3: the front end is frozen, the classifier keeps training
            assert "frontend.conv.weight" not in moved and "head.weight" in moved


def test_auxiliary_loss_is_lambda_times_mean_bump_of_training_forwards():
    model = create_model("polar-cnn", "classify", num_classes=10, image_size=16,
                         frontend="polarizing", frontend_options={"stage_epochs": [4, 2]})
    x = torch.rand(5, 3, 16, 16)
    model.train()
    model.frontend.set_epoch(2)  # stage 1, λ = 0.5
    model(x)
    z = model.frontend.normalized(x)
    expected = 0.5 * torch.exp(-z.square() / (2 * 0.35 ** 2)).mean()
    torch.testing.assert_close(auxiliary_losses(model), expected)
    model.eval()
    model(x)
    assert auxiliary_losses(model) is None  # no stale term from an evaluation forward
    model.train()
    model.frontend.set_epoch(0)  # λ = 0 at a stage's first epoch
    model(x)
    assert auxiliary_losses(model) is None


@pytest.mark.parametrize("backbone, size", [("small-cnn", 16), ("mlp", 16), ("resnet18", 32),
                                            ("cnn-small", 16)])
def test_front_end_composes_with_backbones(backbone, size):
    model = create_model(backbone, "hash", bits=16, image_size=size, frontend="polarizing")
    assert model(torch.rand(2, 3, size, size)).shape == (2, 16)
    first = next(m for m in model.backbone.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) in (
        25, 25 * size * size)
    assert torch.equal(model.backbone.normalize.mean, torch.zeros(1, 25, 1, 1))


def test_ep_backbone_refuses_a_channel_front_end():
    with pytest.raises(ValueError, match="3-channel"):
        create_model("ep-small", "classify", frontend="polarizing")


def test_rules_leave_the_front_end_exact():
    model = create_model("small-cnn", "classify", image_size=16, frontend="polarizing")
    rules.convert(model, "frsf", seed=0)
    converted = rules.converted_layers(model)
    assert converted and not any(n.startswith("frontend.") for n in converted)
    assert has_bpda_ops(model) and not is_stochastic(model)


def test_ensemble_is_log_mean_softmax_of_realisations():
    fe_opts = {"atoms": 12, "t": 3, "dropout": 0.5, "decoder": [4, 4], "dict_steps": 10,
               "ensemble": 3, "seed": 2}
    model = create_model("small-cnn", "classify", image_size=16, frontend="sparse-coding",
                         frontend_options=fe_opts)
    model.frontend.fit_data(torch.rand(20, 3, 16, 16), seed=0)
    model.eval()
    x = torch.rand(4, 3, 16, 16)
    reseed(model, 3)
    out = model(x)
    # oracle: three single realisations (the same draws, in the same order), averaged
    reseed(model, 3)
    logits = torch.stack([model.head(model.backbone(model.frontend(xi)))
                          for xi in x.repeat(3, 1, 1, 1).view(3, 4, 3, 16, 16)])
    naive = torch.log(F.softmax(logits.double(), -1).mean(0))
    torch.testing.assert_close(out.double(), naive, atol=1e-5, rtol=1e-5)
    assert math.isclose(float(out.detach().exp().sum(1).mean()), 1.0, rel_tol=1e-5)


def test_dropout_generator_state_travels_with_the_weights():
    drop = CoeffDropout(0.5, seed=4)
    x = torch.ones(1, 40)
    drop(x)
    state = drop.state_dict()
    expected = drop(x)
    other = CoeffDropout(0.5, seed=99)
    other.load_state_dict(state)
    assert torch.equal(other(x), expected)  # a resumed run draws the masks it would have
