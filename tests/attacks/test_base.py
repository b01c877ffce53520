"""Properties every attack shares: budget, range, ε = 0, determinism, model state, counting."""

from __future__ import annotations

import copy

import pytest
import torch

from retrieval_bio.attacks import APGD, APGDT, ATTACKS, FGSM, HAG, PGD, SDHA, AutoAttack, Square
from retrieval_bio.models import binarize

HASH_ATTACKS = ("hag", "sdha")
CLASSIFY_ATTACKS = ("fgsm", "pgd", "square", "apgd", "apgd-t", "auto")


def make(name, model, eps, digits, **kw):
    """One attack of each kind with small settings; PGD with a random start."""
    if name == "hag":
        return HAG(model, eps, 5, **kw)
    if name == "sdha":
        codes = binarize(model(digits.train.images).detach())
        return SDHA(model, eps, 5, codes, digits.train.labels, **kw)
    if name == "fgsm":
        return FGSM(model, eps, **kw)
    if name == "pgd":
        return PGD(model, eps, steps=3, random_start=True, **kw)
    if name == "apgd":
        return APGD(model, eps, n_iter=5, **kw)
    if name == "apgd-t":
        return APGDT(model, eps, n_iter=4, n_target_classes=2, **kw)
    if name == "auto":
        return AutoAttack(model, eps, n_iter=4, n_target_classes=2, n_queries=10, **kw)
    return Square(model, eps, n_queries=30, **kw)


@pytest.fixture
def models(hash_model, classifier):
    return {**dict.fromkeys(HASH_ATTACKS, hash_model),
            **dict.fromkeys(CLASSIFY_ATTACKS, classifier)}


def test_registry_names():
    assert ATTACKS.names() == sorted(HASH_ATTACKS + CLASSIFY_ATTACKS)
    assert ATTACKS.get("pgd") is PGD


@pytest.mark.parametrize("name", HASH_ATTACKS + CLASSIFY_ATTACKS)
@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_within_eps_ball_and_pixel_range(name, eps, models, digits):
    x, y = digits.query.images[:64], digits.query.labels[:64]
    assert (x == 0).any() and (x == 1).any()  # clamping to [0, 1] is exercised
    adv = make(name, models[name], eps, digits, grad="model")(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max().item() <= eps + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert not torch.equal(adv, x)  # the attack did move


@pytest.mark.parametrize("name", CLASSIFY_ATTACKS)
@pytest.mark.parametrize("eps", [0.3, 2.0])
def test_l2_within_eps_ball_and_pixel_range(name, eps, models, digits):
    x, y = digits.query.images[:64], digits.query.labels[:64]
    adv = make(name, models[name], eps, digits, grad="model", norm="l2")(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    l2 = (adv - x).flatten(1).norm(dim=1)
    # 1e-6 relative: points within float rounding of the sphere count as on it (base.py)
    assert l2.max().item() <= eps * (1 + 1e-6) + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert not torch.equal(adv, x)


@pytest.mark.parametrize("name", HASH_ATTACKS)
def test_hashing_attacks_refuse_l2(name, models, digits):
    with pytest.raises(ValueError, match="implements norm 'linf' only"):
        make(name, models[name], 0.1, digits, norm="l2")
    with pytest.raises(ValueError, match="norm must be one of"):
        PGD(models["pgd"], 0.1, norm="l1")


@pytest.mark.parametrize("name", HASH_ATTACKS)
def test_eps_zero_gives_clean_images_and_map(name, models, digits, brute_map):
    model = models[name]
    x, y = digits.query.images, digits.query.labels
    adv = make(name, model, 0.0, digits, grad="model")(x, y)
    assert torch.equal(adv, x)
    db = binarize(model(digits.database.images).detach())
    with torch.no_grad():
        clean = brute_map(binarize(model(x)), db, y, digits.database.labels)
        attacked = brute_map(binarize(model(adv)), db, y, digits.database.labels)
    assert attacked == clean


@pytest.mark.parametrize("name", CLASSIFY_ATTACKS)
def test_eps_zero_gives_clean_images_and_accuracy(name, models, digits):
    model = models[name]
    x, y = digits.query.images, digits.query.labels
    adv = make(name, model, 0.0, digits, grad="model")(x, y)
    assert torch.equal(adv, x)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), model(x).argmax(1))


@pytest.mark.parametrize("name", HASH_ATTACKS + CLASSIFY_ATTACKS)
def test_deterministic_and_global_rng_untouched(name, models, digits):
    x, y = digits.query.images[:32], digits.query.labels[:32]
    state = torch.random.get_rng_state()
    a = make(name, models[name], 0.1, digits, grad="model", seed=3)(x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = make(name, models[name], 0.1, digits, grad="model", seed=3)(x, y)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["pgd", "square", "apgd"])
def test_seed_changes_random_choices(name, models, digits):
    x, y = digits.query.images[:32], digits.query.labels[:32]
    a = make(name, models[name], 0.1, digits, grad="model", seed=0)(x, y)
    b = make(name, models[name], 0.1, digits, grad="model", seed=1)(x, y)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", HASH_ATTACKS + CLASSIFY_ATTACKS)
def test_model_mode_restored_and_no_parameter_grads(name, models, digits):
    model = copy.deepcopy(models[name])
    model.train()
    model.backbone.eval()  # a mixed state must come back exactly as it was
    before = [m.training for m in model.modules()]
    stats = [b.clone() for b in model.buffers()]
    make(name, model, 0.1, digits, grad="model")(digits.query.images[:16],
                                                 digits.query.labels[:16])
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())
    # eval mode during the attack: BatchNorm running statistics did not move
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))


def test_call_counters(models, digits):
    x, y = digits.query.images[:8], digits.query.labels[:8]
    hag = HAG(models["hag"], 0.1, 7, grad="model")
    hag(x)
    assert (hag.n_grad_calls, hag.n_forward_calls) == (7, 8)  # + the clean codes' forward
    pgd = PGD(models["pgd"], 0.1, steps=4, grad="model")
    pgd(x, y)
    assert pgd.n_grad_calls == 4
    fgsm = FGSM(models["fgsm"], 0.1, grad="model")
    fgsm(x, y)
    assert fgsm.n_grad_calls == 1


def test_presets(hash_model, digits):
    codes = torch.ones(3, 16)
    labels = torch.eye(3, 10)
    assert (HAG(hash_model, preset="paper", eps=0.01).steps, HAG(hash_model, 0.01).steps) == (5, 5)
    ref = HAG(hash_model, preset="reference")
    assert (ref.eps, ref.steps) == (8 / 255, 2000)
    ref = SDHA(hash_model, train_codes=codes, train_labels=labels, preset="reference")
    assert (ref.eps, ref.steps) == (8 / 255, 1500)
    assert HAG(hash_model, 0.5, 3, preset="reference").steps == 3  # explicit values win
    with pytest.raises(ValueError):
        HAG(hash_model, steps=5)  # no ε and no preset that sets one
    with pytest.raises(ValueError):
        HAG(hash_model, 0.1, preset="nope")


def test_rejects_bad_arguments(classifier, digits):
    with pytest.raises(ValueError):
        PGD(classifier, -0.1)
    with pytest.raises(ValueError):
        PGD(classifier, 0.1, grad="biotorch")
    with pytest.raises(ValueError):
        FGSM(classifier, 0.1)(digits.query.images[:2] * 2, digits.query.labels[:2])


@pytest.mark.parametrize("name", ["hag", "pgd", "apgd"])
def test_works_inside_no_grad(name, models, digits):
    x, y = digits.query.images[:16], digits.query.labels[:16]
    expected = make(name, models[name], 0.1, digits, grad="model")(x, y)
    with torch.no_grad():
        assert torch.equal(make(name, models[name], 0.1, digits, grad="model")(x, y), expected)
