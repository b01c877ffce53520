"""HAG and SDHA on a trained digits hashing model (SPEC §7), both gradient sources (§2)."""

from __future__ import annotations

import copy

import pytest
import torch

from retrieval_bio import rules
from retrieval_bio.attacks import HAG, SDHA, hag_loss, theory_codes
from retrieval_bio.models import binarize


@pytest.fixture(scope="module")
def setup(hash_model, digits, brute_map):
    with torch.no_grad():
        db = binarize(hash_model(digits.database.images))
        train = binarize(hash_model(digits.train.images))

    def evaluate(model, images):
        with torch.no_grad():
            codes = binarize(model(images))
        return brute_map(codes, db, digits.query.labels, digits.database.labels)

    clean = evaluate(hash_model, digits.query.images)
    return evaluate, clean, train


def attack(name, model, eps, steps, digits, train, grad="model"):
    if name == "hag":
        return HAG(model, eps, steps, grad=grad)
    return SDHA(model, eps, steps, train, digits.train.labels, grad=grad)


def test_trained_model_is_a_good_retriever(setup):
    _, clean, _ = setup
    assert clean > 0.9


@pytest.mark.parametrize("name", ["hag", "sdha"])
def test_large_eps_lowers_map_and_more_steps_do_not_weaken(name, hash_model, digits, setup):
    evaluate, clean, train = setup
    x, y = digits.query.images, digits.query.labels
    maps = {steps: evaluate(hash_model, attack(name, hash_model, 0.3, steps, digits, train)(x, y))
            for steps in (5, 20)}
    assert maps[20] < 0.5 * clean  # a substantial drop at a large ε
    assert maps[20] <= maps[5] + 0.01
    if name == "hag":  # HAG's SGD (lr 100) uses the budget within the paper's 5 steps
        assert maps[5] < 0.5 * clean


def test_theory_codes_are_negated_clean_codes(hash_model, digits, setup):
    evaluate, clean, _ = setup
    x = digits.query.images[:10]
    with torch.no_grad():
        h = hash_model(x)
    assert torch.equal(theory_codes(hash_model, x), -binarize(h))


@pytest.mark.parametrize("balance", ["masked", "unmasked"])
def test_hag_reduces_its_own_objective(hash_model, digits, balance):
    x = digits.query.images[:32]
    adv = HAG(hash_model, 0.1, 10, grad="model", balance=balance)(x)
    with torch.no_grad():
        h = torch.tanh(hash_model(x))
        before = hag_loss(torch.tanh(hash_model(x)), h, balance=balance)
        after = hag_loss(torch.tanh(hash_model(adv)), h, balance=balance)
    assert after < before


def test_hag_balance_option(hash_model, digits):
    """``balance`` is validated, stored and reaches the loss: once bits flip (lr 100 flips
    them within a few steps) the masked (SAAT, default) and unmasked forms move x' apart."""
    with pytest.raises(ValueError, match="balance"):
        HAG(hash_model, 0.1, 5, balance="both")
    x = digits.query.images[:32]
    masked, unmasked = HAG(hash_model, 0.1, 5), HAG(hash_model, 0.1, 5, balance="unmasked")
    assert (masked.balance, unmasked.balance) == ("masked", "unmasked")
    assert (masked(x) - unmasked(x)).abs().max() > 1e-3


def test_batch_composition_does_not_change_a_query_perturbation(hash_model, digits, setup):
    _, _, train = setup
    x, y = digits.query.images[:24], digits.query.labels[:24]
    for name in ("hag", "sdha"):
        a = attack(name, hash_model, 0.1, 5, digits, train)
        whole = a(x, y)
        halves = torch.cat([a(x[:10], y[:10]), a(x[10:], y[10:])])
        torch.testing.assert_close(whole, halves, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["hag", "sdha"])
def test_exact_and_model_gradients(name, hash_model, digits, setup):
    """BP: the two sources are one computation. frSF: they differ, and the exact gradient
    is the one of the unconverted network with the same weights."""
    _, _, train = setup
    x, y = digits.query.images[:48], digits.query.labels[:48]
    bp_model = attack(name, hash_model, 0.05, 5, digits, train, "model")(x, y)
    bp_exact = attack(name, hash_model, 0.05, 5, digits, train, "exact")(x, y)
    assert torch.equal(bp_model, bp_exact)
    bp_conv = rules.convert(copy.deepcopy(hash_model), "bp")
    assert torch.equal(attack(name, bp_conv, 0.05, 5, digits, train, "model")(x, y), bp_model)

    frsf = rules.convert(copy.deepcopy(hash_model), "frsf", seed=0)
    fr_exact = attack(name, frsf, 0.05, 5, digits, train, "exact")(x, y)
    fr_model = attack(name, frsf, 0.05, 5, digits, train, "model")(x, y)
    assert (fr_exact - fr_model).abs().max() > 0.01
    torch.testing.assert_close(fr_exact, bp_model, atol=1e-5, rtol=0)
