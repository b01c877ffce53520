"""CIFAR-C corruptions: the loader of the official arrays (a fixture written in their exact
format) and the in-process generators (determinism, range, strength over severities on real
digits images, closed forms of the constant-driven ones)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from scipy import ndimage

from retrieval_bio import datasets
from retrieval_bio.datasets import DatasetError
from retrieval_bio.datasets.corruptions import (
    BRIGHTNESS,
    CONTRAST,
    CORRUPTIONS,
    ELASTIC,
    GAUSSIAN_NOISE,
    IMPULSE_NOISE,
    NOT_GENERATED,
    SHOT_NOISE,
    CifarC,
    available_corruptions,
    clipped_zoom,
    corrupt,
    corrupt_array,
    elastic_fields,
    hsv_to_rgb,
    image_rng,
    load_cifar_c,
    plasma_fractal,
    rgb_to_hsv,
)

K = 4  # images per severity in the fixture (the release has 10,000)
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur",
          "fog", "elastic_transform"}


def write_cifar_c(root, names=("gaussian_noise", "fog"), k=K, classes=10, seed=0):
    """The official layout: ``<name>.npy`` (5k, 32, 32, 3) uint8, ``labels.npy`` (5k,) uint8
    (the same k labels once per severity). Returns ``{name: array}, labels``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(rng.integers(0, classes, size=k), 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    arrays = {}
    for name in names:
        arrays[name] = rng.integers(0, 256, size=(5 * k, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", arrays[name])
    return arrays, labels


# -- the official arrays --------------------------------------------------------------------


def test_loader_returns_each_severity_block(tmp_path):
    arrays, labels = write_cifar_c(tmp_path)
    assert available_corruptions(tmp_path) == ["gaussian_noise", "fog"]  # CIFAR-C's order
    for s in range(1, 6):
        images, y = load_cifar_c(tmp_path, "fog", s)
        block = arrays["fog"][(s - 1) * K:s * K]
        assert images.shape == (K, 3, 32, 32) and images.dtype == torch.float32
        assert torch.equal(images, torch.from_numpy(block).permute(0, 3, 1, 2).float() / 255)
        assert y.dtype == torch.int64 and y.tolist() == labels[(s - 1) * K:s * K].tolist()


def test_subset_is_seeded_and_the_same_at_every_severity(tmp_path):
    arrays, _ = write_cifar_c(tmp_path, k=10)
    folder = CifarC(tmp_path, max_images=3, seed=5)
    rows = [folder.positions(s) - (s - 1) * 10 for s in range(1, 6)]
    assert all(np.array_equal(rows[0], r) for r in rows) and len(rows[0]) == 3
    assert np.array_equal(rows[0], np.sort(np.random.default_rng(5).permutation(10)[:3]))
    images, _ = folder.load("gaussian_noise", 2)
    expect = arrays["gaussian_noise"][10 + rows[0]]
    assert torch.equal(images, torch.from_numpy(expect).permute(0, 3, 1, 2).float() / 255)


def test_dataset_items_are_resized_one_hot_cells(tmp_path):
    _, labels = write_cifar_c(tmp_path)
    folder = CifarC(tmp_path, ["fog"], image_size=16, num_classes=12)
    cell = folder.dataset("fog", 3)
    image, label, index = cell[1]
    assert len(cell) == K and image.shape == (3, 16, 16) and label.shape == (12,)
    assert int(label.argmax()) == labels[2 * K + 1] and label.sum() == 1 and index == 1
    assert 0 <= float(image.min()) and float(image.max()) <= 1


@pytest.mark.parametrize(("damage", "message"), [
    ("no labels", "labels.npy not found"),
    ("short array", "gaussian_noise.npy holds a uint8 array of shape (19, 32, 32, 3)"),
    ("28 px", "expected (20, 32, 32, 3) uint8"),
    ("float array", "holds a float32 array"),
    ("labels not 5 blocks", "has 21 labels, not a positive multiple of 5"),
    ("pickled labels", "labels.npy cannot be read as a .npy array"),
])
def test_loader_rejects_a_damaged_folder_naming_the_file(tmp_path, damage, message):
    write_cifar_c(tmp_path)
    bad = tmp_path / "gaussian_noise.npy"
    if damage == "no labels":
        (tmp_path / "labels.npy").unlink()
    elif damage == "short array":
        np.save(bad, np.zeros((19, 32, 32, 3), np.uint8))
    elif damage == "28 px":
        np.save(bad, np.zeros((20, 28, 28, 3), np.uint8))
    elif damage == "float array":
        np.save(bad, np.zeros((20, 32, 32, 3), np.float32))
    elif damage == "labels not 5 blocks":
        np.save(tmp_path / "labels.npy", np.zeros(21, np.uint8))
    else:  # an object array needs pickle: it must be refused, never unpickled
        np.save(tmp_path / "labels.npy", np.array([{"a": 1}] * 20, dtype=object),
                allow_pickle=True)
    with pytest.raises(DatasetError) as err:
        load_cifar_c(tmp_path, "gaussian_noise", 1)
    text = str(err.value)
    assert message in text
    assert str(tmp_path) in text  # the file is named with its folder


def test_loader_errors_for_missing_folder_corruption_and_bad_severity(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR-C folder not found"):
        load_cifar_c(tmp_path / "nope", "fog", 1)
    write_cifar_c(tmp_path)
    with pytest.raises(DatasetError, match=r"contrast\.npy not found.*found: gaussian_noise, fog"):
        load_cifar_c(tmp_path, "contrast", 1)
    for severity in (0, 6):
        with pytest.raises(DatasetError, match="severity must be one of 1, 2, 3, 4, 5"):
            load_cifar_c(tmp_path, "fog", severity)
    with pytest.raises(DatasetError, match=r"class ids up to \d but the model has 5 classes"):
        CifarC(tmp_path, num_classes=5)


# -- the generators ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """48 real digits (sklearn's, upsampled to 32 px by the toolkit), tinted so that colour
    corruptions (saturation) act on them: ink orange, paper blue."""
    split = datasets.load("digits", image_size=32, seed=0).query
    grey = torch.stack([split[i][0] for i in range(48)]).mean(1, keepdim=True)
    ink, paper = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.2, 0.3, 0.6])
    return grey * ink.view(1, 3, 1, 1) + (1 - grey) * paper.view(1, 3, 1, 1)


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_generated_corruption_is_seeded_8_bit_and_in_range(digits, name):
    x = digits[:6]
    a, b = corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=1)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(torch.round(a * 255) / 255, a)  # stored as 8 bits, like the release
    other = corrupt(x, name, 3, seed=2)
    assert (not torch.equal(a, other)) == (name in RANDOM)
    # image i's noise depends on its index only: corrupting in pieces changes nothing
    assert torch.equal(torch.cat([corrupt(x[:2], name, 3, seed=1),
                                  corrupt(x[2:], name, 3, seed=1, start=2)]), a)
    # any size works (constants in pixels, see the module docstring)
    assert corrupt(x[:1, :, :20, :20], name, 5, seed=0).shape == (1, 3, 20, 20)


def _distance(digits: torch.Tensor, name: str) -> list[float]:
    """Mean |corrupted − clean| per severity 1..5 over the batch, from the corruption's own
    output before 8-bit storage: truncating to 8 bits adds up to 1/255 per value, as much as
    the mildest blurs change, and would hide their order."""
    fn = CORRUPTIONS.get(name)
    x = (torch.round(digits * 255) / 255).permute(0, 2, 3, 1).double().numpy()
    return [float(np.mean([np.abs(fn(x[i], s, image_rng(0, name, s, i)) - x[i]).mean()
                           for i in range(len(x))])) for s in range(1, 6)]


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS.names())
                                        - {"glass_blur", "elastic_transform", "saturate"}))
def test_generated_corruption_gets_stronger_with_severity(digits, name):
    d = _distance(digits, name)
    assert all(b >= a for a, b in zip(d, d[1:], strict=False)), d
    assert d[4] > d[0]


def test_non_monotone_tables_do_what_cifar_c_says(digits):
    # saturate: S x 0.3, x 0.1 (desaturate), then x 1.5, x 2 + 0.1, x 2.5 + 0.2 (saturate):
    # each half grows, but severity 3 changes the image less than severity 2
    s = _distance(digits, "saturate")
    assert s[1] > s[0] and s[2] < s[3] < s[4] and s[2] < s[1], s
    # glass_blur: (σ, passes) = (.05, 1), (.25, 1), (.4, 1), (.25, 2), (.4, 2): the number of
    # jitter passes, not σ, sets the strength (more blur smooths the jitter back a little)
    g = _distance(digits, "glass_blur")
    assert min(g[3:]) > 1.5 * max(g[:3]), g
    # elastic_transform: the random affine part (the larger change) shrinks with severity
    # while the smooth local displacement grows
    jitter = [32 * c[2] for c in ELASTIC]
    assert jitter == sorted(jitter, reverse=True)
    rms = []
    for s in range(1, 6):
        fields = [elastic_fields(32, 32, s, np.random.default_rng(i)) for i in range(20)]
        rms.append(float(np.sqrt(np.mean([f[1] ** 2 + f[2] ** 2 for f in fields]))))
    assert rms[0] == 0.0 and all(b > a for a, b in zip(rms, rms[1:], strict=False)), rms


def test_contrast_and_brightness_match_their_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3))
    x[0, 0] = 0.0  # a black pixel: no hue, no saturation
    for s in range(1, 6):
        m = x.mean(axis=(0, 1))
        c = CONTRAST[s - 1]
        assert np.allclose(CORRUPTIONS.get("contrast")(x, s, rng), (x - m) * c + m, atol=1e-12)
        # brightness in HSV: V -> min(V + c, 1) keeps hue and saturation, so RGB scales by
        # V'/V; a black pixel (V = 0) becomes grey c
        v = x.max(axis=2, keepdims=True)
        v_new = np.minimum(v + BRIGHTNESS[s - 1], 1.0)
        expect = np.where(v > 0, x * v_new / np.where(v > 0, v, 1), v_new)
        got = CORRUPTIONS.get("brightness")(x, s, rng)
        assert np.allclose(got, expect, atol=1e-12)
        assert np.allclose(got[0, 0], BRIGHTNESS[s - 1])


def test_hsv_conversion_matches_colorsys():
    rng = np.random.default_rng(1)
    x = rng.random((50, 3))
    x[:5] = x[:5, :1]  # greys
    hsv = rgb_to_hsv(x)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in x])
    assert np.allclose(hsv, ref, atol=1e-12)
    assert np.allclose(hsv_to_rgb(hsv), x, atol=1e-12)


def test_noise_statistics_match_the_constants():
    grey = np.full((64, 64, 3), 0.5)  # far from 0 and 1: nothing is clipped
    for s in range(1, 6):
        rng = np.random.default_rng(s)
        g = CORRUPTIONS.get("gaussian_noise")(grey, s, rng) - grey
        assert abs(g.std() / GAUSSIAN_NOISE[s - 1] - 1) < 0.03 and abs(g.mean()) < 0.003
        lam = SHOT_NOISE[s - 1]  # Poisson(λ x) / λ: mean x, variance x / λ
        p = CORRUPTIONS.get("shot_noise")(grey, s, rng)
        assert abs(p.mean() - 0.5) < 0.01 and abs(p.var() / (0.5 / lam) - 1) < 0.05
        imp = CORRUPTIONS.get("impulse_noise")(grey, s, rng)
        hit = (imp == 0) | (imp == 1)
        assert abs(hit.mean() / IMPULSE_NOISE[s - 1] - 1) < 0.15
        assert abs((imp == 1).sum() / hit.sum() - 0.5) < 0.1
        assert np.all(imp[~hit] == 0.5)


def test_zoom_matches_scipy_zoom_as_cifar_c_calls_it():
    def reference(img, z):  # make_cifar_c.py's clipped_zoom
        h = img.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        out = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (out.shape[0] - h) // 2
        return out[trim:trim + h, trim:trim + h]

    x = np.random.default_rng(2).random((32, 32, 3))
    for z in np.arange(1, 1.26, 0.01):
        assert np.allclose(clipped_zoom(x, float(z)), reference(x, float(z)), atol=1e-12)


def test_glass_blur_moves_pixels_by_copying_an_up_left_neighbour():
    # severity 1 blurs with σ = 0.05 (a 1-tap kernel: no blur), so only the jitter acts.
    # CIFAR-C's tuple "swap" of numpy views copies the neighbour into (h, w): every pixel of
    # rows/columns 2..31 comes from itself or its up/left neighbours, the rest is untouched.
    x = np.random.default_rng(3).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    y = corrupt_array(x, "glass_blur", 1, seed=4)
    assert np.array_equal(y[:2], x[:2]) and np.array_equal(y[:, :2], x[:, :2])
    moved = 0
    for h in range(2, 32):
        for w in range(2, 32):
            sources = [x[h + dy, w + dx] for dy in (-1, 0) for dx in (-1, 0)]
            assert any(np.array_equal(y[h, w], s) for s in sources)
            moved += not np.array_equal(y[h, w], x[h, w])
    assert moved > 400  # about 3/4 of the 900 pixels take a neighbour's value


def test_plasma_fractal_and_input_checks():
    f = plasma_fractal(32, 2.0, np.random.default_rng(0))
    assert f.shape == (32, 32) and f.min() == 0.0 and f.max() == 1.0
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(24, 2.0, np.random.default_rng(0))
    fn = CORRUPTIONS.get("fog")
    with pytest.raises(ValueError, match="severity must be one of"):
        fn(np.zeros((8, 8, 3)), 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        fn(np.full((8, 8, 3), 2.0), 1, np.random.default_rng(0))
    for name in NOT_GENERATED:
        with pytest.raises(KeyError, match="--root"):
            corrupt(torch.zeros(1, 3, 8, 8), name, 1)
