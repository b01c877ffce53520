"""How B evolves with training, save/load, exact_gradients and the parameter list."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

from retrieval_bio import rules

RULES_NON_BP = ("fa", "usf", "frsf", "brsf")


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 25, 6), nn.ReLU(), nn.Linear(6, 3))


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 5, 5, generator=gen)
    y = torch.randint(0, 3, (4,), generator=gen)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_registry_and_names() -> None:
    assert rules.RULES == ("bp", "fa", "usf", "frsf", "brsf")
    assert sorted(rules.RULE_REGISTRY.names()) == sorted(rules.RULES)
    assert all(rules.RULE_REGISTRY.help(r) for r in rules.RULES)
    with pytest.raises(KeyError):
        rules.convert(_mlp(), "dfa")
    with pytest.raises(ValueError):
        rules.convert(_mlp(), "usf", scale="unit")


def test_bp_leaves_model_untouched() -> None:
    model = _mlp()
    types = [type(m) for m in model.modules()]
    assert rules.convert(model, "bp") is model
    assert [type(m) for m in model.modules()] == types
    assert rules.converted_layers(model) == {} and rules.rule_of(model) == "bp"


@pytest.mark.parametrize("rule", RULES_NON_BP)
def test_nothing_new_in_parameters(rule: str) -> None:
    model = _mlp()
    before = [(n, id(p)) for n, p in model.named_parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before converting: still valid
    rules.convert(model, rule)
    assert [(n, id(p)) for n, p in model.named_parameters()] == before
    assert set(rules.converted_layers(model)) == {"0", "4", "6"}
    assert rules.rule_of(model) == rule
    old = model[6].weight.detach().clone()
    _step(model, opt, 0)
    rules.feedback(model[6])
    _step(model, opt, 1)
    assert not torch.equal(old, model[6].weight)
    assert [(n, id(p)) for n, p in model.named_parameters()] == before
    assert all(not b.requires_grad for b in model.buffers())


def test_usf_follows_sign_flip_after_step() -> None:
    torch.manual_seed(0)
    layer = rules.convert(nn.Linear(8, 5), "usf")
    x = torch.randn(16, 8)
    old_b = rules.feedback(layer)
    torch.testing.assert_close(torch.sign(old_b), torch.sign(layer.weight.detach()))
    # One SGD step with gradient 2W and lr 1 takes W to -W: every sign flips.
    opt = torch.optim.SGD([layer.weight], lr=1.0)
    layer.weight.grad = 2.0 * layer.weight.detach()
    opt.step()
    w = layer.weight.detach()
    assert (torch.sign(w) != torch.sign(old_b)).all()  # all signs flipped
    new_b = rules.feedback(layer)
    torch.testing.assert_close(new_b, torch.sign(w) * w.norm() / torch.sign(w).norm())
    # ... and the next backward really uses it.
    xr = x.clone().requires_grad_(True)
    g = torch.randn(16, 5)
    layer(xr).backward(g)
    torch.testing.assert_close(xr.grad, g @ new_b)


def test_frsf_magnitudes_fixed_across_steps_and_save_load() -> None:
    torch.manual_seed(1)
    model = rules.convert(_mlp(), "frsf", seed=1)
    m0 = {n: layer.M.clone() for n, layer in rules.converted_layers(model).items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rules.attach(opt, model)  # a no-op for frSF
    for i in range(3):
        _step(model, opt, i)
    for name, layer in rules.converted_layers(model).items():
        assert torch.equal(layer.M, m0[name])
        w = layer.weight.detach()
        b = rules.feedback(layer)
        torch.testing.assert_close(b, layer.M * torch.sign(w) * w.norm()
                                   / (layer.M * torch.sign(w)).norm())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = rules.convert(_mlp(), "frsf", seed=7)
    assert not torch.equal(fresh[4].M, model[4].M)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for name, layer in rules.converted_layers(fresh).items():
        assert torch.equal(layer.M, m0[name])
        torch.testing.assert_close(rules.feedback(layer),
                                   rules.feedback(rules.converted_layers(model)[name]))


def test_fa_random_matrix_survives_save_load() -> None:
    model = rules.convert(_mlp(), "fa", seed=2)
    fresh = rules.convert(_mlp(), "fa", seed=9)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh[6].R, model[6].R)


def test_brsf_redraws_every_step_and_resumes_identically() -> None:
    torch.manual_seed(2)
    model = rules.convert(_mlp(), "brsf", seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rules.attach(opt, model)
    seen = [model[6].M.clone()]
    for i in range(3):
        _step(model, opt, i)
        m = model[6].M
        assert 0 <= m.min() and m.max() <= 1
        assert all(not torch.equal(m, old) for old in seen)
        b = rules.feedback(model[6])
        w = model[6].weight.detach()
        torch.testing.assert_close(b, m * torch.sign(w) * w.norm() / (m * torch.sign(w)).norm())
        seen.append(m.clone())
    # Resume: a fresh model (other seed) loading the checkpoint continues with the same draws.
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    resumed = rules.convert(_mlp(), "brsf", seed=11)
    resumed.load_state_dict(state)
    assert torch.equal(resumed[6].M, model[6].M)
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(opt_state)
    rules.attach(opt2, resumed)
    _step(model, opt, 10)
    _step(resumed, opt2, 10)
    assert torch.equal(resumed[6].M, model[6].M)
    torch.testing.assert_close(resumed[6].weight, model[6].weight)


def test_on_optimizer_step_by_hand_matches_attach() -> None:
    a = rules.convert(_mlp(), "brsf", seed=4)
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    rules.attach(opt_a, a)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    _step(a, opt_a, 0)
    _step(b, opt_b, 0)
    rules.on_optimizer_step(b)
    assert torch.equal(a[4].M, b[4].M)


@pytest.mark.parametrize("rule", RULES_NON_BP)
def test_bp_state_dict_loads_strictly(rule: str) -> None:
    bp = _mlp()
    model = rules.convert(_mlp(), rule, seed=5)
    own = {n: b.clone() for n, b in model.named_buffers()}
    model.load_state_dict(bp.state_dict())  # strict=True: missing feedback buffers are fine
    for (n, p), (_, q) in zip(model.named_parameters(), bp.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    for n, b in model.named_buffers():
        if n.endswith((".M", ".R", ".M_state")):
            assert torch.equal(b, own[n])
    # A converted state dict has extra keys (none for uSF): a BP model then needs strict=False.
    if rule == "usf":
        assert model.state_dict().keys() == bp.state_dict().keys()
    else:
        with pytest.raises(RuntimeError):
            _mlp().load_state_dict(model.state_dict())
    _mlp().load_state_dict(model.state_dict(), strict=False)


@pytest.mark.parametrize("rule", RULES_NON_BP)
def test_exact_gradients_restores_bp_then_rule(rule: str) -> None:
    torch.manual_seed(6)
    ref = _mlp().double()
    model = rules.convert(copy.deepcopy(ref), rule)
    x = torch.rand(4, 3, 5, 5, dtype=torch.float64)

    def grads(net: nn.Module) -> list[torch.Tensor]:
        xr = x.clone().requires_grad_(True)
        net.zero_grad(set_to_none=True)
        net(xr).pow(2).sum().backward()
        return [xr.grad] + [p.grad.clone() for p in net.parameters()]

    bp = grads(ref)
    own = grads(model)
    assert not torch.allclose(own[0], bp[0])
    with rules.exact_gradients(model):
        for a, b in zip(grads(model), bp, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert all(torch.equal(rules.feedback(m), m.weight)
                   for m in rules.converted_layers(model).values())
        with rules.exact_gradients(model):  # nesting keeps exact mode on inner exit
            pass
        torch.testing.assert_close(grads(model)[0], bp[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(model), own, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not any(m.exact for m in rules.converted_layers(model).values())


def test_skips_layers_with_their_own_forward(caplog: pytest.LogCaptureFixture) -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class Plain(nn.Linear):  # inherits Linear.forward: converted
        pass

    model = nn.Sequential(Scaled(3, 3), Plain(3, 3))
    rules.convert(model, "usf")
    assert set(rules.converted_layers(model)) == {"1"}
    assert isinstance(model[1], Plain) and "keeps exact gradients" in caplog.text
    with pytest.raises(ValueError):
        rules.convert(model, "frsf")  # already converted


def test_fused_optimizer_with_attach_updates_feedback() -> None:
    """Fused Adam does not bump W's version counter; attach() still refreshes B."""
    torch.manual_seed(7)
    layer = rules.convert(nn.Linear(6, 4), "usf")
    opt = torch.optim.Adam(layer.parameters(), lr=0.5, fused=True)
    rules.attach(opt, layer)
    rules.feedback(layer)
    for i in range(3):
        opt.zero_grad()
        layer(torch.randn(5, 6)).pow(2).sum().backward()
        opt.step()
        w = layer.weight.detach()
        x = torch.randn(5, 6, requires_grad=True)
        g = torch.randn(5, 4)
        layer(x).backward(g)
        torch.testing.assert_close(x.grad, g @ (torch.sign(w) * w.norm() / torch.sign(w).norm()),
                                   msg=f"step {i}")
