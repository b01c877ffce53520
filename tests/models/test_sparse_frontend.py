"""The sparse-coding front end (seed 004 §4.2): the encoder's stages against hand-computed
oracles (top-T, the dead-zone code, the HWC patch layout), its randomness (own generator,
reseedable, global RNG untouched), sizes through the decoder, BPDA, the dictionary fit and
the ensemble's log-mean-softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval_bio.models.frontends import bpda, is_stochastic, reseed
from retrieval_bio.models.frontends import sparse as sparse_mod
from retrieval_bio.models.frontends.sparse import (
    SparseCodingFrontEnd,
    atoms_to_weight,
    extract_patches,
    log_mean_softmax,
)

SMALL = dict(atoms=20, t=5, dict_steps=20, dict_batch=5, decoder=(8, 4))


def make(**options) -> SparseCodingFrontEnd:
    """A small front end with a random unit-norm dictionary (no sklearn)."""
    torch.manual_seed(0)
    m = SparseCodingFrontEnd(**{**SMALL, **options})
    d = torch.randn(m.dictionary.shape, generator=torch.Generator().manual_seed(1))
    m.dictionary.copy_(d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    m.fitted.fill_(True)
    return m


def hwc_patch(x: torch.Tensor, i: int, j: int, n: int) -> torch.Tensor:
    """The n×n patch of one image (3, H, W) at top-left (i, j), flattened row, column,
    channel, by plain slicing."""
    return x[:, i:i + n, j:j + n].permute(1, 2, 0).reshape(-1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(7))


# -- top-T and the code ---------------------------------------------------------------------

def test_top_t_keeps_exactly_t_signed_largest_entries():
    m = make(dropout=0.0)
    x = torch.rand(3, 3, 16, 16)
    xbar = F.conv2d(x, m.dictionary, stride=2)
    xt = m.encode(x, quantize=False)
    assert xt.shape == xbar.shape == (3, 20, 7, 7)
    nz = xt != 0
    assert (nz.sum(1) == 5).all()                              # T per location
    assert torch.equal(xt[nz], xbar[nz])                       # value and sign kept
    kept_min = torch.where(nz, xbar.abs(), torch.inf).amin(1)
    dropped_max = torch.where(nz, -torch.inf, xbar.abs()).amax(1)
    assert (kept_min > dropped_max).all()                      # the largest |x̄|
    code = m.encode(x)
    assert (code != 0).sum(1).le(5).all()
    both = (code != 0)
    assert torch.equal(code[both].sign(), xbar[both].sign())
    assert (xbar < 0).any() and (code < 0).any()               # the sign survives [C3]


def test_code_entries_are_zero_or_signed_atom_l1_norms():
    m = make(dropout=0.0, beta=6.0)                            # |x̃|/‖d‖₁ straddles 48/255
    x = torch.rand(2, 3, 16, 16)
    xt = m.encode(x, quantize=False)
    code = m.encode(x)
    l1 = m.dictionary.abs().sum((1, 2, 3)).view(1, -1, 1, 1).expand_as(code)
    assert torch.isclose(code.abs(), l1).logical_or(code == 0).all()
    z = xt / l1
    thr = 6.0 * 8 / 255
    clear = (z.abs() - thr).abs() > 1e-5                       # away from the threshold
    expected = torch.where(z.abs() >= thr, z.sign() * l1, torch.zeros_like(z))
    assert torch.allclose(code[clear], expected[clear])
    assert ((xt != 0) & (code == 0)).any()                     # some fell in the dead zone
    assert ((xt != 0) & (code != 0)).any()                     # and some did not


def test_dead_zone_by_hand():
    """Two atoms ±(1, …, 1)/√48 on a flat grey image v: x̃/‖d‖₁ = ±v; the dead zone is
    β·ε_d = 24/255 ≈ 0.094, so v = 0.05 gives 0 and v = 0.2 gives ±‖d‖₁ = ±√48."""
    m = SparseCodingFrontEnd(atoms=2, t=2, dropout=0.0, decoder=(4, 4))
    u = torch.ones(3, 4, 4) / math.sqrt(48)
    m.dictionary.copy_(torch.stack([u, -u]))
    m.fitted.fill_(True)
    low = m.encode(torch.full((1, 3, 8, 8), 0.05))
    high = m.encode(torch.full((1, 3, 8, 8), 0.2))
    assert torch.equal(low, torch.zeros_like(low))
    assert torch.allclose(high[0, 0], torch.full((3, 3), math.sqrt(48)))
    assert torch.allclose(high[0, 1], torch.full((3, 3), -math.sqrt(48)))


# -- randomness -----------------------------------------------------------------------------

def test_dropout_draws_own_generator_reseedable():
    m = make(dropout=0.5).eval()                               # random at test time too
    x = torch.rand(2, 3, 16, 16)
    state = torch.get_rng_state()
    a, b = m.encode(x, quantize=False), m.encode(x, quantize=False)
    assert torch.equal(torch.get_rng_state(), state)           # global RNG untouched
    assert not torch.equal(a, b)                               # two EOT samples differ
    torch.manual_seed(1)
    reseed(m, 5)
    c = m.encode(x, quantize=False)
    torch.manual_seed(2)
    reseed(m, 5)
    d = m.encode(x, quantize=False)
    assert torch.equal(c, d)                                   # the op's seed, not the global
    m.dropout.reseed(5)
    assert torch.equal(m.encode(x, quantize=False), c)
    reseed(m, 6)
    assert not torch.equal(m.encode(x, quantize=False), c)
    assert is_stochastic(m)


def test_dropout_zeroes_survivors_without_rescaling():
    m = make(dropout=0.5, t=10)
    x = torch.rand(8, 3, 16, 16)
    xbar = F.conv2d(x, m.dictionary, stride=2)
    xt = m.encode(x, quantize=False)
    nz = xt != 0
    assert torch.equal(xt[nz], xbar[nz])                       # no 1/(1 − p)
    kept = nz.sum(1).float()
    assert kept.max() <= 10
    assert abs(kept.mean().item() - 5.0) < 0.5                 # T·(1 − p), 392 locations


def test_no_dropout_is_deterministic():
    m = make(dropout=0.0)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(m(x), m(x))
    assert not is_stochastic(m)


# -- the dictionary -------------------------------------------------------------------------

def test_patches_flatten_hwc_and_atoms_reshape_to_match():
    x = torch.rand(2, 3, 11, 9)
    p = extract_patches(x, 4, 2)
    assert p.shape == (2, 4 * 3, 48)                           # m = 4 × 3 locations
    for img, (a, b) in [(0, (0, 0)), (1, (3, 2)), (1, (2, 1))]:
        assert torch.equal(p[img, a * 3 + b], hwc_patch(x[img], 2 * a, 2 * b, 4))
    atoms = torch.randn(5, 48)
    out = F.conv2d(x, atoms_to_weight(atoms, 4), stride=2)
    for img, (a, b) in [(0, (0, 0)), (1, (3, 2)), (0, (1, 2))]:
        want = atoms @ hwc_patch(x[img], 2 * a, 2 * b, 4)
        assert torch.allclose(out[img, :, a, b], want, atol=1e-5)


def test_fit_data_sees_each_drawn_patch_once(images, monkeypatch):
    """A spy around the real sklearn estimator: dict_steps mini-batches, no early stop, and
    the patches it sees are real patches of the images; the stored atoms are its
    components_ (renormalised), laid out so that the conv computes their dot products."""
    seen = {}
    real = sparse_mod._dictionary_learner

    def spy(**kwargs):
        learner = real(**kwargs)
        fit = learner.fit

        def recording_fit(x):
            seen["x"] = x.copy()
            out = fit(x)
            seen["steps"] = learner.n_steps_
            seen["components"] = learner.components_.copy()
            return out

        learner.fit = recording_fit
        return learner

    monkeypatch.setattr(sparse_mod, "_dictionary_learner", spy)
    m = SparseCodingFrontEnd(**{**SMALL, "dict_steps": 30})
    m.fit_data(images, seed=3)
    assert seen["x"].shape == (150, 48) and seen["steps"] == 30
    allp = extract_patches(images.double(), 4, 2).reshape(-1, 48).numpy()
    rows = {r.tobytes() for r in allp}
    assert all(r.tobytes() in rows for r in seen["x"])
    assert len({r.tobytes() for r in seen["x"]}) == 150        # without replacement
    comp = torch.as_tensor(seen["components"]).float()
    comp = comp / comp.norm(dim=1, keepdim=True)
    out = F.conv2d(images[:1], m.dictionary, stride=2)
    want = comp @ hwc_patch(images[0], 2 * 2, 2 * 5, 4)
    assert torch.allclose(out[0, :, 2, 5], want, atol=1e-5)


def test_fit_data_unit_atoms_deterministic_per_seed(images):
    m = SparseCodingFrontEnd(**SMALL)
    assert not m.is_fitted
    with pytest.raises(RuntimeError, match="fit_data"):
        m(images[:1])
    m.fit_data(images, seed=0)
    assert m.is_fitted and bool(m.fitted)
    assert m.dictionary.shape == (20, 3, 4, 4)
    assert torch.allclose(m.dictionary.flatten(1).norm(dim=1), torch.ones(20), atol=1e-5)
    d0 = m.dictionary.clone()
    m.fit_data(images, seed=0)
    assert torch.equal(m.dictionary, d0)
    m.fit_data(images, seed=1)
    assert not torch.equal(m.dictionary, d0)
    assert "dictionary" not in dict(m.named_parameters())     # frozen: a buffer
    state = m.state_dict()
    assert "dictionary" in state and "fitted" in state
    fresh = SparseCodingFrontEnd(**SMALL)
    with pytest.raises(RuntimeError, match="fit_data"):
        fresh(images[:1])
    fresh.load_state_dict(state)
    assert fresh.is_fitted and torch.equal(fresh.dictionary, m.dictionary)


def test_fit_data_with_fewer_patches_than_draws_cycles_through_all():
    few = torch.rand(1, 3, 8, 8)                                # 9 patches, 100 draws
    m = SparseCodingFrontEnd(**{**SMALL, "atoms": 6, "t": 2})
    m.fit_data(few, seed=0)
    assert m.is_fitted and torch.isfinite(m.dictionary).all()


# -- sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(32, 32), (28, 28), (16, 16), (33, 31), (4, 9)])
def test_output_is_an_image_of_the_input_size(size):
    m = make(dropout=0.5)
    x = torch.rand(2, 3, *size)
    y = m(x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1


def test_cifar_decoder_sizes():
    """15 → 32 → 34 → 36 → centre 32 (seed 004 §4.2), and an odd size: the first layer
    restores H×W exactly (output padding), where plain ConvT would give 32 for 33 px."""
    for hw, chain in [(32, [32, 34, 36]), (33, [33, 35, 37])]:
        m = make(dropout=0.0, atoms=30, t=5)
        sizes = []
        for layer in m.decoder:
            layer.register_forward_hook(lambda mod, i, o, sizes=sizes:
                                        sizes.append(o.shape[-1]))
        assert m.encode(torch.rand(1, 3, hw, hw)).shape[-1] == 15
        m(torch.rand(1, 3, hw, hw))
        assert sizes == chain


def test_too_small_input_is_an_error():
    with pytest.raises(ValueError, match="at least 4 px"):
        make()(torch.rand(1, 3, 3, 8))


# -- BPDA -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, zero", [("none", True), ("identity", False),
                                        ("smooth", False)])
def test_bpda_gradient_through_the_quantiser(spec, zero):
    m = make(dropout=0.3, beta=1.0)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with bpda(m, spec):
        reseed(m, 0)
        (g,) = torch.autograd.grad(m(x).square().sum(), x)
    if zero:
        assert torch.equal(g, torch.zeros_like(g))              # the obfuscated gradient
    else:
        assert g.abs().sum() > 0 and torch.isfinite(g).all()


# -- ensemble and options -------------------------------------------------------------------

def test_log_mean_softmax_matches_naive_float64():
    logits = torch.randn(7, 4, 10, generator=torch.Generator().manual_seed(0)) * 5
    naive = torch.log(torch.softmax(logits.double(), -1).mean(0))
    assert torch.allclose(log_mean_softmax(logits).double(), naive, atol=1e-5)
    assert torch.allclose(log_mean_softmax(logits.double()), naive, atol=1e-12)
    big = torch.tensor([[[1000.0, 0.0]], [[0.0, 1000.0]]])      # naive float32 overflows
    assert torch.allclose(log_mean_softmax(big), torch.full((1, 2), -math.log(2)))
    assert torch.allclose(log_mean_softmax(logits[:1]), F.log_softmax(logits[0], -1),
                          atol=1e-6)
    with pytest.raises(ValueError):
        log_mean_softmax(logits[0])


def test_options_and_description():
    m = SparseCodingFrontEnd(ensemble=10)
    assert (m.ensemble, m.atoms, m.t, m.p, m.out_channels) == (10, 500, 50, 0.95, 3)
    assert m.normalized_output is False
    assert np.isclose(m.threshold, 24 / 255)
    assert m.dictionary.shape == (500, 3, 4, 4)
    text = repr(m)
    for key in ("atoms=500", "t=50", "dropout=0.95", "ensemble=10", "fitted=False"):
        assert key in text
    with pytest.raises(TypeError):
        SparseCodingFrontEnd(image_size=32)
    with pytest.raises(TypeError):
        SparseCodingFrontEnd(20)
    for bad in (dict(t=0), dict(atoms=10, t=11), dict(dropout=1.0), dict(decoder=(8,)),
                dict(ensemble=0), dict(beta=0)):
        with pytest.raises(ValueError):
            SparseCodingFrontEnd(**bad)
