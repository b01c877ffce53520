"""make_transform against PIL computed by hand (an independent second implementation)."""

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval_bio.datasets import make_transform


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_crop_mode_is_resize_256_centre_crop_224():
    im = _image(300, 200)
    out = make_transform(224)(im)
    # Oracle: shorter side 200 -> 256 (bilinear, PIL), then the central 224 x 224 window.
    w = int(256 * 300 / 200)
    big = np.asarray(im.resize((w, 256), Image.BILINEAR), dtype=np.float32) / 255
    top, left = round((256 - 224) / 2), round((w - 224) / 2)
    want = torch.from_numpy(big[top : top + 224, left : left + 224].transpose(2, 0, 1).copy())
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, want, atol=1e-6)


def test_general_size_resizes_to_size_times_256_over_224():
    out = make_transform(112)(_image(40, 40))
    assert out.shape == (3, 112, 112)
    # round(112 * 256 / 224) = 128: a 40 px square goes to 128 then is centre-cropped to 112.
    big = np.asarray(_image(40, 40).resize((128, 128), Image.BILINEAR), dtype=np.float32) / 255
    assert torch.allclose(out, torch.from_numpy(big[8:120, 8:120].transpose(2, 0, 1).copy()),
                          atol=1e-6)


def test_resize_mode_at_native_size_is_exact_pixels():
    im = _image(32, 32)
    out = make_transform(32)(im)
    want = torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255)
    assert torch.equal(out, want)


@pytest.mark.parametrize("size", [32, 224])
def test_augmentation_only_on_train(size):
    im = _image(48, 40, seed=1)
    plain = make_transform(size)(im)
    # augment=True has no effect off the train split: evaluation stays deterministic.
    assert torch.equal(make_transform(size, train=False, augment=True)(im), plain)
    aug = make_transform(size, train=True, augment=True)
    torch.manual_seed(0)
    outs = [aug(im) for _ in range(6)]
    assert all(o.shape == (3, size, size) and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert any(not torch.equal(o, outs[0]) for o in outs[1:])
    assert any(not torch.equal(o, plain) for o in outs)


def test_bad_mode_and_size():
    with pytest.raises(ValueError):
        make_transform(32, mode="stretch")
    with pytest.raises(ValueError):
        make_transform(0)
