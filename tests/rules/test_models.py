"""Rules on whole networks: VGG-16 stays finite; diagnostics agree with direct computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from retrieval_bio import rules
from retrieval_bio.models import create_model


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vgg16", "classify", num_classes=10)


@pytest.mark.parametrize("rule", rules.RULES[1:])
def test_vgg16_gradients_finite_at_every_layer(vgg16: nn.Module, rule: str) -> None:
    """SPEC §2: with scale="norm" a 16-layer net does not overflow (32 px, one batch)."""
    model = rules.convert(copy.deepcopy(vgg16), rule, scale="norm", seed=0).eval()
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    nn.functional.cross_entropy(model(x), y).backward()
    n_layers = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            n_layers += 1
            g = module.weight.grad
            assert g is not None and torch.isfinite(g).all(), name
            assert g.abs().sum() > 0, name
    assert n_layers == 16
    assert len(rules.converted_layers(model)) == 16


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))


def test_layer_angles() -> None:
    torch.manual_seed(1)
    base = create_model("small-cnn", "classify", num_classes=4)
    names = [n for n, m in base.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    bp = rules.layer_angles(base)
    assert list(bp) == names and all(abs(v) < 1e-4 for v in bp.values())
    usf = rules.convert(copy.deepcopy(base), "usf")
    angles = rules.layer_angles(usf)
    for name, m in usf.named_modules():
        if name in names:
            w = m.weight.detach()
            assert angles[name] == pytest.approx(_angle(torch.sign(w), w), abs=1e-6)
            assert 0 < angles[name] < 90
    fa = rules.layer_angles(rules.convert(copy.deepcopy(base), "fa"))
    assert all(70 < v < 110 for v in fa.values())  # random R is nearly orthogonal to W


def test_gradient_angles_match_direct_computation() -> None:
    torch.manual_seed(2)
    model = rules.convert(create_model("small-cnn", "classify", num_classes=4), "frsf").train()
    x = torch.rand(3, 3, 16, 16)
    y = torch.tensor([0, 2, 3])
    bn = model.backbone.net[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    angles = rules.gradient_angles(model, nn.CrossEntropyLoss(), (x, y))
    # Nothing was left behind: no parameter gradients, BatchNorm statistics unchanged.
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.num_batches_tracked,
                                                                  stats[2])
    # The first conv's input is the image (no gradient); every later layer is reported.
    assert set(angles) == set(rules.converted_layers(model)) - {"backbone.net.0"}
    # Direct oracle at the head: its input gradient is g @ B (rule) vs g @ W (exact), with
    # g = d loss / d logits, the same for both since the head is the last layer.
    feats = model.backbone(x).detach()
    with torch.no_grad():
        for m, s in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats,
                        strict=True):
            m.copy_(s)
    logits = model.head(feats.requires_grad_(False)).detach().requires_grad_(True)
    nn.CrossEntropyLoss()(logits, y).backward()
    g = logits.grad
    expected = _angle(g @ rules.feedback(model.head), g @ model.head.weight.detach())
    assert angles["head"] == pytest.approx(expected, abs=1e-4)
    assert all(0 <= v <= 180 for v in angles.values())
    assert rules.gradient_angles(create_model("small-cnn", "classify", num_classes=4),
                                 nn.CrossEntropyLoss(), (x, y)) == {}
