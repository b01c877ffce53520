"""Backbones: output shapes at CIFAR and ImageNet size, normalisation inside the model,
weights files and their errors."""

from __future__ import annotations

import pytest
import torch

from retrieval_bio.models import (
    Normalize,
    WeightsNotFoundError,
    create_backbone,
    create_model,
)

NAMES = ["small-cnn", "resnet18", "alexnet", "vgg16", "timm:resnet10t"]
FEATURES = {"small-cnn": 128, "resnet18": 512, "alexnet": 4096, "vgg16": 4096,
            "timm:resnet10t": 512}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [32, 224])
def test_output_shapes(name, size):
    torch.manual_seed(0)
    model = create_model(name, "hash", bits=32).eval()
    with torch.no_grad():
        h = model(torch.rand(2, 3, size, size))
        f = model.backbone(torch.rand(2, 3, size, size))
    assert h.shape == (2, 32)
    assert f.shape == (2, FEATURES[name]) == (2, model.backbone.num_features)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("name", ["resnet18", "small-cnn", "timm:resnet10t"])
def test_normalisation_is_the_first_module_inside(name):
    bb = create_backbone(name).eval()
    first = next(iter(bb.children()))
    assert isinstance(first, Normalize)
    x = torch.rand(2, 3, 32, 32)
    mean, std = first.mean, first.std
    with torch.no_grad():
        # an independent path: normalise by hand and call the bare network
        expected = bb.net((x - mean) / std).flatten(1)
        assert torch.allclose(bb(x), expected, atol=1e-6)
    assert std.shape == (1, 3, 1, 1) and (std > 0).all()


def test_classify_head_outputs_logits():
    m = create_model("small-cnn", "classify", num_classes=7)
    assert m(torch.rand(3, 3, 32, 32)).shape == (3, 7)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(WeightsNotFoundError, match="nowhere/vgg16.pth"):
        create_backbone("vgg16", weights=missing)


def test_missing_imagenet_cache_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"checkpoints/resnet18-f37072fd\.pth"):
        create_backbone("resnet18", weights="imagenet")


def test_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    src = create_backbone("resnet18").eval()
    path = tmp_path / "r18.pt"
    torch.save(src.net.state_dict(), path)
    torch.manual_seed(2)
    dst = create_backbone("resnet18", weights=path).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_weights_file_for_another_architecture_is_refused(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(create_backbone("small-cnn").net.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit backbone 'resnet18'"):
        create_backbone("resnet18", weights=path)
