"""The EP ConvNet's dynamics and gradients against independent computations: the explicit
equations against autograd of Φ, EP's parameter and input-gradient estimates against
backprop through time, and what each attack gradient source differentiates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval_bio.attacks.base import gradient_mode
from retrieval_bio.learners.base import StepContext
from retrieval_bio.learners.ep import EquilibriumPropagation
from retrieval_bio.models import create_model
from retrieval_bio.models.ep import EPConvNet, set_attack_steps


def small_model(**options):
    torch.manual_seed(0)
    return create_model("ep-small", "classify", num_classes=10, **options).double()


def ce(z, labels):
    return F.cross_entropy(z, labels.argmax(1))


def ctx(step=0, seed=0):
    return StepContext(device=torch.device("cpu"), amp=False,
                       scaler=torch.amp.GradScaler(enabled=False), seed=seed, global_step=step)


@pytest.mark.parametrize("paddings,pools,size", [
    ((1, 1), (True, True), 16),
    ((1, 1, 1, 0), (True, True, True, True), 32),  # seed 002's CIFAR topology, thin
    ((1, 0), (False, True), 9),  # a layer without pool and an odd size
])
def test_explicit_dynamics_equal_autograd_of_phi(paddings, pools, size):
    torch.manual_seed(1)
    channels = (4, 5, 6, 7)[:len(paddings)]
    net = EPConvNet(3, channels, paddings, pools, image_size=size).double()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    nudge = torch.randn(3, *net.shapes[-1], dtype=torch.float64)
    s = net.zero_states(x)
    worst = 0.0
    for t in range(12):
        push = nudge if t % 2 else None
        a, b = net.step(x, s, push), net.step_autograd(x, s, push)
        worst = max(worst, *((u - v).abs().max().item() for u, v in zip(a, b, strict=True)))
        s = a
    assert worst < 1e-12
    assert any(t.abs().sum() > 0 for t in s)  # the states moved off zero


def test_state_shapes_follow_the_seed_topology():
    net = EPConvNet(3, (128, 256, 512, 512), (1, 1, 1, 0), (True,) * 4, image_size=32)
    assert net.shapes == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 1, 1)]
    assert net.num_features == 512


def test_symmetric_ep_estimate_matches_bptt_per_layer():
    # at small β the estimate is the gradient of the equilibrium; at larger β pool argmax
    # switches between the phases bias it (measured: per-layer cosine 0.62-0.99 at β = 0.05)
    model = small_model(t_free=60, t_nudge=20, beta=0.01)
    net = model.backbone.net
    torch.manual_seed(2)
    x = torch.rand(8, 3, 16, 16, dtype=torch.float64)
    labels = F.one_hot(torch.randint(0, 10, (8,)), 10).double()
    # BPTT: backprop through the 60 recorded free steps of the same loss
    ce(model.head(net.relax(model.backbone.normalize(x), 60)[-1].flatten(1)), labels).backward()
    bptt = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    EquilibriumPropagation().training_step(model, ce, x, labels, ctx())
    for name, p in model.named_parameters():
        cos = F.cosine_similarity(p.grad.flatten(), bptt[name].flatten(), 0).item()
        ratio = (p.grad.norm() / bptt[name].norm()).item()
        assert cos >= 0.99, (name, cos)
        assert 0.9 < ratio < 1.1, (name, ratio)


def test_model_input_gradient_is_eps_estimate_of_the_exact_one():
    model = small_model(t_attack=60, t_nudge=20, beta=0.01)
    torch.manual_seed(3)
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    labels = F.one_hot(torch.randint(0, 10, (6,)), 10).double()
    grads = {}
    for source in ("exact", "model"):
        xr = x.clone().requires_grad_(True)
        with gradient_mode(model, source):
            (grads[source],) = torch.autograd.grad(ce(model(xr), labels), xr)
    cos = F.cosine_similarity(grads["model"].flatten(), grads["exact"].flatten(), 0).item()
    assert cos >= 0.99
    assert 0.9 < (grads["model"].norm() / grads["exact"].norm()).item() < 1.1
    # the exact source is backprop through t_attack steps: check against a hand unroll
    net = model.backbone.net
    xr = x.clone().requires_grad_(True)
    s = net.zero_states(xr)
    for _ in range(60):
        s = net.step(model.backbone.normalize(xr), s)
    (hand,) = torch.autograd.grad(ce(model.head(s[-1].flatten(1)), labels), xr)
    torch.testing.assert_close(grads["exact"], hand)


def test_forward_relaxes_t_eval_steps_and_attacks_unroll_t_attack():
    model = small_model(t_eval=7, t_attack=3)
    net = model.backbone.net
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    xn = model.backbone.normalize(x)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), net.relax(xn, 7)[-1].flatten(1))
        with gradient_mode(model, "exact"):
            torch.testing.assert_close(model.backbone(x), net.relax(xn, 3)[-1].flatten(1))
    assert set_attack_steps(model, 5) == {"t_attack": 5, "t_eval": 7}
    assert set_attack_steps(create_model("small-cnn"), 5) == {}


def test_a_few_ep_steps_lower_the_loss():
    torch.manual_seed(0)
    model = create_model("ep-small", "classify", num_classes=10)
    net = model.backbone.net
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:64] / 16.0).float()[:, None].expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False).clamp(0, 1)
    labels = F.one_hot(torch.from_numpy(d.target[:64]), 10).float()
    # seed 002's optimiser at the small preset's per-layer rates
    opt = torch.optim.SGD([{"params": net.convs[0].parameters(), "lr": 0.2},
                           {"params": net.convs[1].parameters(), "lr": 0.1},
                           {"params": model.head.parameters(), "lr": 0.05}], momentum=0.9)
    learner = EquilibriumPropagation()
    logged = []
    for step in range(20):
        opt.zero_grad()
        logged.append(learner.training_step(model, ce, x, labels, ctx(step)))
        opt.step()
    with torch.no_grad():
        after = ce(model(x), labels).item()
    assert logged[0] == pytest.approx(2.3026, abs=0.01)  # ln 10: the untrained readout
    assert after < logged[0] - 0.08
    assert all(b < a for a, b in zip(logged[10:-1], logged[11:], strict=True))  # going down


@pytest.mark.parametrize("estimator", ["one_sided", "random_sign"])
def test_other_estimators_point_downhill_and_random_sign_is_seeded(estimator):
    model = small_model(t_free=60, t_nudge=20, beta=0.01)
    x = torch.rand(8, 3, 16, 16, dtype=torch.float64)
    labels = F.one_hot(torch.randint(0, 10, (8,)), 10).double()
    grads = []
    for learner in (EquilibriumPropagation(), EquilibriumPropagation(estimator=estimator,
                                                                     seed=5)):
        model.zero_grad()
        learner.training_step(model, ce, x, labels, ctx(step=3))
        grads.append(torch.cat([p.grad.flatten() for p in model.backbone.parameters()]))
    # biased at finite β, but the same direction as the symmetric estimate
    assert F.cosine_similarity(grads[0], grads[1], 0) > 0.9
    if estimator == "random_sign":
        signs = {EquilibriumPropagation(estimator=estimator, seed=5)._sign(ctx(step=s))
                 for s in range(20)}
        assert signs == {1.0, -1.0}
        assert [EquilibriumPropagation(seed=5)._sign(ctx(step=s)) for s in range(5)] == \
            [EquilibriumPropagation(seed=5)._sign(ctx(step=s)) for s in range(5)]


def test_bp_baseline_has_the_ep_topology():
    ep = create_model("ep-cifar10", num_classes=10)
    bp = create_model("cnn-cifar10", num_classes=10)
    assert ep.backbone.num_features == bp.backbone.num_features == 512
    assert bp(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in bp.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512]
    assert [c.padding[0] for c in convs] == [1, 1, 1, 0]
    assert all(c.bias is None for c in convs)
