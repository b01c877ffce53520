"""The kh and shlp backbones (seed 003): the p-bracket, the per-image normalisation, the
Jacobian penalty of the activations, the spectral regulariser's full-data basis, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval_bio.datasets import TensorSplit
from retrieval_bio.losses.jacobian import graph_jacobian_frobenius_sq
from retrieval_bio.models import create_model
from retrieval_bio.train.pipeline import refresh_statistics


def _images(n=6, size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)


def test_kh_currents_are_the_p_bracket_of_the_l3_normalised_image():
    torch.manual_seed(0)
    model = create_model("kh", image_size=3, hidden=4, p=3.0, power=4.5).double()
    x = _images()
    net = model.backbone.net
    W = net.currents.weight.detach().numpy()
    v = x.flatten(1).numpy()
    v = v / (np.abs(v) ** 3).sum(1, keepdims=True) ** (1 / 3)
    h = v @ (np.sign(W) * np.abs(W) ** 2).T
    np.testing.assert_allclose(net.currents(net.inputs(x)).detach().numpy(), h, rtol=1e-12)
    np.testing.assert_allclose(model.backbone(x).detach().numpy(), np.maximum(h, 0) ** 4.5,
                               rtol=1e-10)
    # normalised inside the model: a brighter copy of an image is the same input
    torch.testing.assert_close(model.backbone(0.3 * x), model.backbone(x))


def _shlp(**options):
    torch.manual_seed(0)
    return create_model("shlp", image_size=3, hidden=5, **options).double()


def _exact_jacobian_sq(net, x):
    out = []
    for xi in x:
        j = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], xi)
        out.append(float(j.pow(2).sum()))
    return np.array(out)


def test_jacobian_penalty_estimates_the_jacobian_of_the_activations():
    model = _shlp(jacobian_penalty=0.5, jacobian_projections=4)
    net = model.backbone.net
    x = _images(4)
    exact = _exact_jacobian_sq(net, x)
    # of the activations a = ReLU(h), so it depends on the input (not ‖W‖² as in [H])
    assert exact.std() > 0
    torch.manual_seed(1)
    draws = []
    for _ in range(400):
        xi = x.clone().requires_grad_(True)
        draws.append(graph_jacobian_frobenius_sq(net(xi), xi, projections=1).numpy())
    draws = np.array(draws)
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - exact) < 4 * se + 1e-12)
    # in training the backbone offers α·mean estimate as its auxiliary loss, with a graph
    model.train()
    model(x)
    aux = net.auxiliary_loss()
    assert aux is not None and aux.requires_grad
    aux.backward()
    assert net.currents.weight.grad.abs().sum() > 0
    model.eval()
    model(x)
    assert net.auxiliary_loss() is None  # no penalty outside training


def test_spectral_basis_is_the_full_data_covariance_eigenbasis():
    model = _shlp(spectral_penalty=1.0, spectral_alpha=1.0).float()
    net = model.backbone.net
    g = torch.Generator().manual_seed(2)
    data = TensorSplit(torch.rand(70, 3, 3, 3, generator=g), torch.eye(10)[torch.arange(70) % 10])
    model.train()
    model(torch.rand(16, 3, 3, 3, generator=g))  # BatchNorm statistics move off their start
    refresh_statistics(model, data, torch.device("cpu"), batch_size=32)  # 3 batches
    assert model.training  # the mode is restored
    net.eval()
    with torch.no_grad():
        h = net.hidden(net.inputs(data.images)).double().numpy()
    cov = np.cov(h, rowvar=False)  # every image, correctly centred (seed 003 (d)7)
    S = net.spectral.basis.double().numpy()
    rotated = S.T @ cov @ S
    np.testing.assert_allclose(np.diag(rotated), np.linalg.eigvalsh(cov)[::-1], rtol=1e-4,
                               atol=1e-6)
    off = rotated - np.diag(np.diag(rotated))
    assert np.abs(off).max() < 1e-4 * np.abs(rotated).max()


def test_spectral_loss_formula():
    model = _shlp(spectral_penalty=1.0, spectral_alpha=1.5, spectral_tau=1)
    pen = model.backbone.net.spectral
    basis = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
    pen.basis.copy_(basis)
    pen.fitted.fill_(True)
    h = torch.randn(9, 5, dtype=torch.float64)
    lam = np.diag(basis.numpy().T @ np.cov(h.numpy(), rowvar=False) @ basis.numpy())
    r = lam / np.arange(1, 6) ** -1.5 - 1
    expected = ((r ** 2 + np.maximum(r, 0))[1:]).sum() / 5
    assert float(pen(h)) == pytest.approx(expected, rel=1e-10)


def test_a_frozen_backbone_stays_in_eval_mode_with_no_trainable_weight():
    model = create_model("cnn-small", image_size=16)
    model.backbone.freeze()
    model.train()
    assert not model.backbone.training and model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
