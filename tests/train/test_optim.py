"""Optimisers and epoch schedules against torch's own schedulers and hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval_bio.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    create_optimizer,
    create_schedule,
)


def _groups(*lrs: float) -> list[dict]:
    return [{"params": [torch.nn.Parameter(torch.ones(3))], "lr": lr, "name": f"g{i}"}
            for i, lr in enumerate(lrs)]


def _torch_lrs(scheduler_cls, epochs: int, lrs: tuple[float, ...], **kw) -> list[list[float]]:
    """Rates torch's scheduler sets at the start of each epoch, stepped once per epoch."""
    opt = torch.optim.SGD(_groups(*lrs), lr=lrs[0])
    sched = scheduler_cls(opt, **kw)
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_registries_list_the_names() -> None:
    assert OPTIMIZERS.names() == ["adam", "sgd"]
    assert SCHEDULES.names() == ["cosine", "linear", "multistep", "none"]


def test_multistep_matches_torch_multisteplr_every_epoch() -> None:
    lrs = (0.1, 0.03)
    sched = create_schedule("multistep", epochs=100, milestones=[60, 90], gamma=0.1)
    expected = _torch_lrs(torch.optim.lr_scheduler.MultiStepLR, 100, lrs,
                          milestones=[60, 90], gamma=0.1)
    for e in range(100):
        assert [sched.lr(b, e) for b in lrs] == pytest.approx(expected[e], rel=1e-12), e
    # the convention: index 59 (the 60th epoch) at base, index 60 (the 61st) at base·0.1
    assert sched.lr(0.1, 59) == 0.1
    assert sched.lr(0.1, 60) == pytest.approx(0.01)
    assert sched.lr(0.1, 90) == pytest.approx(0.001)


def test_cosine_matches_torch_cosineannealing_then_holds() -> None:
    lrs, t_max, lr_min = (0.2, 0.05), 20, 1e-3
    sched = create_schedule("cosine", epochs=30, t_max=t_max, lr_min=lr_min)
    expected = _torch_lrs(torch.optim.lr_scheduler.CosineAnnealingLR, t_max + 1, lrs,
                          T_max=t_max, eta_min=lr_min)
    for e in range(t_max + 1):
        assert [sched.lr(b, e) for b in lrs] == pytest.approx(expected[e], rel=1e-9), e
    for e in range(t_max, 30):
        assert sched.lr(0.2, e) == pytest.approx(lr_min, rel=1e-12)


def test_cosine_t_max_defaults_to_epochs() -> None:
    sched = create_schedule("cosine", epochs=10)
    assert sched.describe() == {"name": "cosine", "t_max": 10, "lr_min": 0.0}
    assert sched.lr(1.0, 5) == pytest.approx(0.5)
    assert sched.lr(1.0, 10) == pytest.approx(0.0, abs=1e-15)


def test_linear_is_the_closed_form() -> None:
    # Krotov-Hopfield: lr_min = 0 gives eps0 · (1 - e/T)
    sched = create_schedule("linear", epochs=50)
    for e in range(50):
        assert sched.lr(0.04, e) == pytest.approx(0.04 * (1 - e / 50), rel=1e-12, abs=1e-15)
    floored = create_schedule("linear", epochs=30, t_max=10, lr_min=0.01)
    for e in range(30):
        assert floored.lr(0.1, e) == pytest.approx(0.1 + (0.01 - 0.1) * min(e, 10) / 10)


def test_none_is_constant_and_describe_names_settings() -> None:
    sched = create_schedule("none", epochs=5, milestones=[1], gamma=0.5)
    assert [sched.lr(0.3, e) for e in range(5)] == [0.3] * 5
    assert sched.describe() == {"name": "none"}
    assert create_schedule("multistep", epochs=9, milestones=(3, 6), gamma=0.5).describe() == {
        "name": "multistep", "milestones": [3, 6], "gamma": 0.5}
    assert create_schedule("linear", epochs=9, lr_min=0.1).describe() == {
        "name": "linear", "t_max": 9, "lr_min": 0.1}


@pytest.mark.parametrize("name", ["multistep", "cosine", "linear"])
def test_apply_survives_a_state_dict_round_trip(name: str) -> None:
    sched = create_schedule(name, epochs=12, milestones=[2, 5], gamma=0.3, lr_min=1e-4)
    lrs = (0.1, 0.01)
    opt = create_optimizer("sgd", _groups(*lrs))
    for e in range(4):
        sched.apply(opt, e)
        assert [g["lr"] for g in opt.param_groups] == [sched.lr(b, e) for b in lrs]
    state = opt.state_dict()
    # a resumed run builds its optimiser from the config again; load_state_dict restores base_lr
    resumed = create_optimizer("sgd", _groups(123.0, 456.0))
    resumed.load_state_dict(state)
    sched.apply(resumed, 4)
    sched.apply(opt, 4)
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in opt.param_groups]
    assert [g["lr"] for g in resumed.param_groups] == [sched.lr(b, 4) for b in lrs]
    assert [g["base_lr"] for g in resumed.param_groups] == list(lrs)
    assert [g["name"] for g in resumed.param_groups] == ["g0", "g1"]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_two_steps_match_a_hand_computation(nesterov: bool) -> None:
    lr, mu, wd = 0.1, 0.9, 0.01
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    grads = [torch.tensor([0.3, 0.1, -0.4], dtype=torch.float64),
             torch.tensor([-0.2, 0.5, 0.25], dtype=torch.float64)]
    p = torch.nn.Parameter(w0.clone())
    opt = create_optimizer("sgd", [{"params": [p], "lr": lr}], weight_decay=wd, momentum=mu,
                           nesterov=nesterov)
    w, v = w0.tolist(), [0.0, 0.0, 0.0]
    for step, g in enumerate(grads):
        p.grad = g.clone()
        opt.step()
        for i in range(3):
            gi = g[i].item() + wd * w[i]
            v[i] = gi if step == 0 else mu * v[i] + gi  # torch: the buffer starts at g
            w[i] -= lr * (gi + mu * v[i] if nesterov else v[i])
        assert p.detach().tolist() == pytest.approx(w, rel=1e-12), step


def test_adam_keeps_per_group_rates_and_extra_keys() -> None:
    opt = create_optimizer("adam", _groups(1e-3, 1e-4), weight_decay=5e-4, betas=(0.8, 0.99))
    assert isinstance(opt, torch.optim.Adam)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert [g["name"] for g in opt.param_groups] == ["g0", "g1"]
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert opt.param_groups[0]["weight_decay"] == 5e-4


def test_default_lr_fills_groups_without_their_own() -> None:
    groups = _groups(0.5)
    groups.append({"params": [torch.nn.Parameter(torch.ones(2))]})
    opt = create_optimizer("sgd", groups, lr=0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]
    with pytest.raises(ValueError, match="'lr'"):
        create_optimizer("adam", [{"params": [torch.nn.Parameter(torch.ones(2))]}])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"momentum": 0.0, "nesterov": True}, "nesterov=True needs momentum > 0"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1.0}, "weight_decay"),
])
def test_bad_sgd_settings_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_optimizer("sgd", _groups(0.1), **kwargs)


def test_bad_adam_betas_and_unknown_name_raise() -> None:
    with pytest.raises(ValueError, match="betas"):
        create_optimizer("adam", _groups(0.1), betas=(0.9, 1.0))
    with pytest.raises(KeyError, match="unknown optimizer 'rmsprop'"):
        create_optimizer("rmsprop", _groups(0.1))


@pytest.mark.parametrize(("name", "kwargs", "key"), [
    ("multistep", {"milestones": []}, "milestones"),
    ("multistep", {"milestones": [60, 60]}, "milestones"),
    ("multistep", {"milestones": [90, 60]}, "milestones"),
    ("multistep", {"milestones": [0, 60]}, "milestones"),
    ("multistep", {"milestones": [60.5]}, "milestones"),
    ("multistep", {"milestones": [60], "gamma": 0.0}, "gamma"),
    ("multistep", {"milestones": [60], "gamma": -0.1}, "gamma"),
    ("cosine", {"t_max": 0}, "t_max"),
    ("cosine", {"lr_min": -1e-3}, "lr_min"),
    ("linear", {"t_max": -5}, "t_max"),
    ("linear", {"lr_min": math.nan}, "lr_min"),
])
def test_bad_schedule_values_name_the_key(name: str, kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        create_schedule(name, epochs=100, **kwargs)


def test_t_max_error_when_epochs_is_zero_and_bad_epoch_index() -> None:
    with pytest.raises(ValueError, match="t_max"):
        create_schedule("cosine", epochs=0)
    with pytest.raises(ValueError, match="epoch"):
        create_schedule("none", epochs=3).lr(0.1, -1)
