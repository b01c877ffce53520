"""PEPITA (seed 000 Algorithm 1): ΔW against a hand computation, shared masks, no graph,
F fixed and checkpointed, the model contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from retrieval_bio.config import ConfigError
from retrieval_bio.datasets import TensorSplit
from retrieval_bio.learners import Pepita, StepContext, create_learner, prepare_model
from retrieval_bio.losses import create_loss
from retrieval_bio.models import create_model, shared_masks
from retrieval_bio.train import Trainer


def _net(bias=True, output_bias=True, dropout=0.0, hidden=(5,), seed=0):
    torch.manual_seed(seed)
    model = create_model("mlp", "classify", num_classes=3, image_size=2, hidden=list(hidden),
                         dropout=dropout, bias=bias, output_bias=output_bias, grey=True)
    return model.double()


def _ctx():
    return StepContext(torch.device("cpu"), False, torch.amp.GradScaler("cuda", enabled=False))


def _batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 3).double()
    return x, y


def _by_hand(model, F, x, y, output_error, masks=None):
    """Seed 000 Algorithm 1 in numpy, float64, one explicit loop per layer."""
    Ws = [m.weight.detach().numpy() for m in model.backbone.net.linears]
    bs = [None if m.bias is None else m.bias.detach().numpy()
          for m in model.backbone.net.linears]
    Wo = model.head.weight.detach().numpy()
    bo = np.zeros(Wo.shape[0]) if model.head.bias is None else model.head.bias.detach().numpy()
    X = x.mean(1).reshape(len(x), -1).numpy()  # grey: the channel mean, flattened
    Y = y.numpy()
    masks = masks or [np.ones((len(X), W.shape[0])) for W in Ws]

    def hidden(inp):
        hs = []
        for W, b, m in zip(Ws, bs, masks, strict=True):
            a = inp @ W.T + (0 if b is None else b)
            inp = np.maximum(a, 0) * m
            hs.append(inp)
        return hs

    def softmax(z):
        z = z - z.max(1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    h = hidden(X)
    e = softmax(h[-1] @ Wo.T + bo) - Y
    Xm = X + e @ F.numpy().T
    hm = hidden(Xm)
    B = len(X)
    grads = []
    for i, (a, am) in enumerate(zip(h, hm, strict=True)):
        inp = Xm if i == 0 else hm[i - 1]
        d = a - am
        grads.append((d.T @ inp / B, d.mean(0)))
    if output_error == "modulated":
        e = softmax(hm[-1] @ Wo.T + bo) - Y
    grads.append((e.T @ hm[-1] / B, e.mean(0)))
    return grads


@pytest.mark.parametrize("output_error", ["first", "modulated"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("hidden", [(5,), (5, 4)])
def test_delta_w_equals_a_hand_computation(output_error, bias, hidden):
    model = _net(bias=bias, output_bias=bias, hidden=hidden)
    learner = Pepita(output_error=output_error, f_scale=3.0, seed=2)  # large F: a real shift
    learner.prepare(model, nn.Identity())
    learner.F = learner.F.double()
    x, y = _batch()
    loss = learner.training_step(model.train(), create_loss("mse-softmax", num_classes=3),
                                 x, y, _ctx())
    expected = _by_hand(model, learner.F, x, y, output_error)
    layers = [*model.backbone.net.linears, model.head]
    for layer, (gw, gb) in zip(layers, expected, strict=True):
        np.testing.assert_allclose(layer.weight.grad.numpy(), gw, rtol=1e-12, atol=1e-14)
        if bias:
            np.testing.assert_allclose(layer.bias.grad.numpy(), gb, rtol=1e-12, atol=1e-14)
        else:
            assert layer.bias is None
    assert np.isfinite(loss)
    # the modulation really moved the hidden layer (else the test would be vacuous)
    assert np.abs(expected[0][0]).max() > 1e-4


def test_both_passes_share_one_dropout_mask():
    model = _net(dropout=0.5, hidden=(6,))
    learner = Pepita(f_scale=3.0, seed=2)
    learner.prepare(model, nn.Identity())
    learner.F = learner.F.double()
    x, y = _batch()
    torch.manual_seed(123)
    learner.training_step(model.train(), create_loss("mse-softmax", num_classes=3), x, y,
                          _ctx())
    torch.manual_seed(123)  # the one mask the step must have drawn
    mask = (torch.empty(6, 6, dtype=torch.float64).bernoulli_(0.5) / 0.5).numpy()
    expected = _by_hand(model, learner.F, x, y, "first", masks=[mask])
    np.testing.assert_allclose(model.backbone.net.linears[0].weight.grad.numpy(),
                               expected[0][0], rtol=1e-12, atol=1e-14)
    # outside the block every forward pass draws anew; inside, the mask is held
    net = model.backbone.net
    assert not torch.equal(net(x), net(x))
    with shared_masks(net):
        assert torch.equal(net(x), net(x))


def test_no_autograd_graph_is_built():
    model = _net(dropout=0.1).float()
    learner = Pepita(seed=0)
    learner.prepare(model, nn.Identity())
    x, y = _batch()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(1) or t, lambda t: t):
        learner.training_step(model.train(), create_loss("mse-softmax", num_classes=3),
                              x.float(), y.float(), _ctx())
    assert packed == []  # nothing was saved for a backward pass
    assert all(p.grad is not None and p.grad.grad_fn is None for p in model.parameters())


def test_f_bounds_seed_and_shape():
    model = create_model("mlp", "classify", num_classes=10, image_size=28, grey=True)
    a, b = Pepita(seed=5), Pepita(seed=5)
    a.prepare(model, nn.Identity())
    b.prepare(model, nn.Identity())
    bound = 0.05 * (6 / 784) ** 0.5  # 0.004374 (pepita.md (a))
    assert a.F.shape == (784, 10) and torch.equal(a.F, b.F)
    assert a.F.abs().max() <= bound and a.F.abs().max() > 0.95 * bound
    assert "F" in a.state_dict() and not list(a.parameters())
    # the He-uniform bounds of the layers (±0.08748 for d = 784, ±0.07655 for the head)
    w1, w2 = model.backbone.net.linears[0].weight, model.head.weight
    for w, bound in ((w1, (6 / 784) ** 0.5), (w2, (6 / 1024) ** 0.5)):
        assert 0.95 * bound < w.abs().max() <= bound


def test_pepita_refuses_models_it_cannot_drive():
    with pytest.raises(ConfigError, match="small-cnn.*--backbone mlp"):
        prepare_model(create_model("small-cnn", "classify", num_classes=10), "pepita")
    with pytest.raises(ConfigError, match="classifiers"):
        prepare_model(create_model("mlp", "hash", bits=16, image_size=8), "pepita")
    with pytest.raises(ConfigError, match="output_error"):
        create_learner("pepita", options={"output_error": "second"})
    with pytest.raises(ConfigError, match="'eta'.*output_error, f_scale"):
        create_learner("pepita", options={"eta": 1})


def _digits(n=256):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:n].astype("float32") / 16)[:, None].expand(-1, 3, -1, -1)
    y = torch.nn.functional.one_hot(torch.from_numpy(d.target[:n]).long(), 10).float()
    return TensorSplit(x.contiguous(), y)


def _pepita_trainer(run_dir, seed=0, epochs=2, hooks=()):
    torch.manual_seed(0)
    model = create_model("mlp", "classify", num_classes=10, image_size=8, hidden=[32],
                         grey=True)
    groups = [{"params": list(model.parameters()), "lr": 0.05}]
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    return Trainer(model, create_loss("mse-softmax", num_classes=10), _digits(),
                   param_groups=groups, optimizer=opt, epochs=epochs, batch_size=32,
                   seed=1, run_dir=run_dir, learner=Pepita(seed=seed), step_hooks=hooks)


def test_f_is_unchanged_by_training_and_survives_save_and_load(tmp_path):
    trainer = _pepita_trainer(tmp_path / "a")
    f0 = trainer.learner.F.clone()
    w0 = trainer.model.head.weight.detach().clone()
    trainer.fit()
    assert torch.equal(trainer.learner.F, f0)
    assert not torch.equal(trainer.model.head.weight, w0)  # it did train
    other = _pepita_trainer(tmp_path / "a", seed=99)  # another seed draws another F ...
    assert not torch.equal(other.learner.F, f0)
    other.load(tmp_path / "a" / "checkpoint.pt")  # ... which the checkpoint replaces
    assert torch.equal(other.learner.F, f0)
