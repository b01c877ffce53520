"""Natural corruptions (CIFAR-10-C / CIFAR-100-C; Hendrycks & Dietterich, ICLR 2019).

Two ways to get corrupted images, both used by seed 002 §5.1 (method notes: ep.md §2.4):

* **The official arrays** (:class:`CifarC`, :func:`load_cifar_c`): Hendrycks' pre-generated
  ``.npy`` files as unpacked from the Zenodo release, read memory-mapped so a 50,000-image
  file is never read whole. This is what published numbers use; prefer it.
* **In-process generation** (:data:`CORRUPTIONS`, :func:`corrupt`,
  :class:`GeneratedCorruptions`) of the 15 corruptions that need no outside tool, with
  CIFAR-C's **own** severity constants, from ``hendrycks/robustness``
  ``ImageNet-C/create_c/make_cifar_c.py`` (not ImageNet-C's, nor the ``imagecorruptions``
  package's, which are ImageNet-C's and corrupt 32-px images far harder; ep.md §2.7).

Not generated (load the official arrays for them):

* ``motion_blur`` and ``snow``: ImageMagick's ``MotionBlurImage`` through Wand;
* ``frost``: the frost photographs shipped with ImageNet-C's code;
* ``spatter``: its severities 1-3 draw water drops with OpenCV's Canny edge detector,
  distance transform and histogram equalisation, which numpy/scipy would only approximate.

Layout of the official folder (CIFAR-10-C and CIFAR-100-C alike)::

    ROOT/labels.npy        (50000,) integer class ids: the 10,000 test labels, once per
                           severity 1..5
    ROOT/<corruption>.npy  (50000, 32, 32, 3) uint8: severities 1..5 stacked, 10,000
                           images each, image i of every block = test image i

**Conventions of the generators** (what CIFAR-C did, so a generated image is distributed
like an official one):

* Each corruption takes one image ``(H, W, 3)`` in [0, 1] (uint8 is divided by 255) and
  returns it corrupted, clipped to [0, 1]. :func:`corrupt` rounds the clean image to 8 bits
  first (CIFAR-C corrupts the uint8 test set, and JPEG/pixelate work on 8-bit images) and
  stores the result as CIFAR-C saved it: ``np.uint8(255 * y)``, i.e. **truncated** (not
  rounded) to a multiple of 1/255.
* Randomness comes only from a ``numpy.random.Generator``; :func:`corrupt` gives image ``i``
  its own generator seeded by ``(seed, corruption, severity, i)``, so the output does not
  depend on batch size or on which other images are corrupted with it. Global RNGs are
  never touched.
* **Image size.** The constants are CIFAR-C's for 32-px images and are applied in pixels as
  they are at any size: at 8 px a blur of σ = 1 px is relatively four times stronger, at
  224 px much weaker. Two exceptions follow the original's own scaling: ``elastic_transform``
  multiplies its constants by the image side (CIFAR-C's ``IMSIZE``), and ``fog`` draws its
  fractal on the next power of two at least as large as the image. The toolkit's 32-px
  default (digits, CIFAR) is where the numbers mean what CIFAR-C's mean.
"""

from __future__ import annotations

import functools
import io
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import Dataset

from ..registry import Registry
from .errors import DatasetError, missing

SEVERITIES = (1, 2, 3, 4, 5)
LABELS = "labels.npy"
#: side in px of every CIFAR-C image.
CIFAR_C_SIZE = 32
#: CIFAR-10-C's 19 corruptions in seed 002's evaluation order (ep.md §2.4); reports and
#: listings use this order, names not in it come after, alphabetically.
CIFAR_C_ORDER = (
    "gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "spatter", "brightness",
    "speckle_noise", "gaussian_blur", "snow", "contrast", "defocus_blur", "elastic_transform",
    "fog", "glass_blur", "impulse_noise", "jpeg_compression", "pixelate", "saturate", "frost",
)
#: corruptions of CIFAR-C that are not generated here, and why.
NOT_GENERATED = {
    "motion_blur": "needs ImageMagick's motion blur (Wand)",
    "snow": "needs ImageMagick's motion blur (Wand)",
    "frost": "needs the frost photographs shipped with ImageNet-C",
    "spatter": "needs OpenCV's Canny edges, distance transform and histogram equalisation",
}
CIFAR_C_LAYOUT = """\
  ROOT/labels.npy        (50000,) integer class ids (the 10,000 test labels per severity)
  ROOT/<corruption>.npy  (50000, 32, 32, 3) uint8, severities 1..5 stacked (10,000 each),
                         e.g. gaussian_noise.npy, contrast.npy, fog.npy
(the folder unpacked from the Zenodo release CIFAR-10-C.tar or CIFAR-100-C.tar)
"""

#: one image ``(H, W, 3)`` float in [0, 1], severity 1..5, generator -> corrupted image.
CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")


def corruption_order(names: Sequence[str]) -> list[str]:
    """``names`` without repeats, in :data:`CIFAR_C_ORDER` (unknown names last, sorted)."""
    rank = {n: i for i, n in enumerate(CIFAR_C_ORDER)}
    return sorted(dict.fromkeys(names), key=lambda n: (rank.get(n, len(rank)), n))


def check_severity(severity: int) -> int:
    """``severity`` as an int in 1..5; ``ValueError`` naming it otherwise."""
    if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
            or severity not in SEVERITIES):
        raise ValueError(f"severity must be one of 1, 2, 3, 4, 5 (CIFAR-C's levels), got "
                         f"{severity!r}")
    return int(severity)


def _corruption(name: str, help: str) -> Callable[[CorruptionFn], CorruptionFn]:  # noqa: A002
    """Register ``fn`` under ``name`` behind a wrapper that accepts uint8 or float images,
    checks the severity and clips the result to [0, 1]."""

    def deco(fn: CorruptionFn) -> CorruptionFn:
        @functools.wraps(fn)
        def wrapper(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
            x = as_float_image(image)
            return np.clip(fn(x, check_severity(severity), rng), 0.0, 1.0)

        return CORRUPTIONS.register(name, help)(wrapper)

    return deco


def as_float_image(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` image as float64 in [0, 1]: uint8 is divided by 255, floats must
    already lie in [0, 1]."""
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"a corruption takes one (H, W, 3) image, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    x = x.astype(np.float64)
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"float images must lie in [0, 1], got [{x.min():g}, {x.max():g}]")
    return x


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 by rounding (inputs are multiples of 1/255 here, so exact)."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest",
              truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian as CIFAR-C called it: blur the two spatial axes with σ px
    (channels untouched); skimage's default border is ``nearest``, its truncation 4 σ."""
    sig = (sigma, sigma, 0.0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


# -- noise ---------------------------------------------------------------------------------

#: σ of the additive Gaussian noise, pixels in [0, 1].
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)
#: photon count scale λ: x -> Poisson(λ x) / λ (smaller λ, more noise).
SHOT_NOISE = (500, 250, 100, 75, 50)
#: fraction of values replaced by 0 or 1 (salt and pepper in equal parts).
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)
#: σ of the multiplicative noise: x -> x + x·N(0, σ²).
SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)


@_corruption("gaussian_noise", "additive Gaussian noise, σ 0.04..0.10 (CIFAR-C)")
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """x + N(0, σ²) per value, σ = :data:`GAUSSIAN_NOISE` [severity − 1]."""
    return x + rng.normal(0.0, GAUSSIAN_NOISE[severity - 1], size=x.shape)


@_corruption("shot_noise", "Poisson (shot) noise, λ 500..50 (CIFAR-C)")
def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(λ x) / λ per value, λ = :data:`SHOT_NOISE` [severity − 1]."""
    lam = SHOT_NOISE[severity - 1]
    return rng.poisson(x * lam) / lam


@_corruption("impulse_noise", "salt-and-pepper noise, 1..7 % of values (CIFAR-C)")
def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Each value (each channel separately) is replaced with probability
    c = :data:`IMPULSE_NOISE` [severity − 1], by 1 or 0 with equal odds.

    This is ``skimage.util.random_noise(mode="s&p", amount=c)`` as current skimage does it.
    Older skimage releases (likely the one that made the official arrays in 2018) drew a
    fixed count, ``ceil(c·size/2)`` salt and as many pepper positions with replacement,
    instead of a draw per value: about the same fraction, not the same distribution.
    """
    flipped = rng.random(x.shape) < IMPULSE_NOISE[severity - 1]
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


@_corruption("speckle_noise", "multiplicative Gaussian noise, σ 0.06..0.20 (CIFAR-C)")
def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """x + x·N(0, σ²) per value, σ = :data:`SPECKLE_NOISE` [severity − 1]."""
    return x + x * rng.normal(0.0, SPECKLE_NOISE[severity - 1], size=x.shape)


# -- blur ----------------------------------------------------------------------------------

#: σ in px of the Gaussian blur.
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)
#: (σ px of both blurs, largest shift px, shuffle passes).
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
#: (disk radius px, σ px of the 3-tap blur that anti-aliases the disk).
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
#: zoom factors averaged: ``np.arange(1, stop, 0.01)`` for these stops. Floating point
#: makes the first two ranges include their stop (7 and 12 factors, up to 1.06 and 1.11);
#: the others end at 1.15, 1.20, 1.25 (16, 21, 26 factors). Kept as CIFAR-C had them.
ZOOM_BLUR_STOPS = (1.06, 1.11, 1.16, 1.21, 1.26)


@_corruption("gaussian_blur", "Gaussian blur, σ 0.4..1 px (CIFAR-C)")
def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of σ = :data:`GAUSSIAN_BLUR` [severity − 1] px (edge pixels repeated
    beyond the border, kernel cut at 4 σ, as ``skimage.filters.gaussian``)."""
    return _gaussian(x, GAUSSIAN_BLUR[severity - 1])


@_corruption("glass_blur", "blur, local pixel jitter, blur again (CIFAR-C)")
def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur (σ), store as 8 bits (truncated, as CIFAR-C does between the steps), move
    pixels locally ``passes`` times, blur again; (σ, shift, passes) = :data:`GLASS_BLUR`
    [severity − 1].

    CIFAR-C visits rows and columns ``H − d .. d + 1`` (d the shift) from the bottom-right
    and draws offsets ``dx, dy`` in ``[−d, d)``, i.e. −1 or 0 for d = 1. Its "swap" is a
    tuple assignment of two numpy views, ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``, which
    **copies** the neighbour's pixel into ``(h, w)`` and leaves the neighbour as it was. The
    official arrays were made that way, so this does the same. Since every source pixel lies
    up or left of its target and is visited later, one pass is a single gather from the
    image before that pass.
    """
    sigma, d, passes = GLASS_BLUR[severity - 1]
    h, w = x.shape[:2]
    u = np.floor(np.clip(_gaussian(x, sigma), 0.0, 1.0) * 255.0) / 255.0
    rows = np.arange(d + 1, h - d + 1)  # CIFAR-C's range(h - d, d, -1), in any order
    cols = np.arange(d + 1, w - d + 1)
    if len(rows) and len(cols):
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        for _ in range(passes):
            dx, dy = rng.integers(-d, d, size=(2, *rr.shape))
            before = u.copy()
            u[rr, cc] = before[rr + dy, cc + dx]
    return _gaussian(u, sigma)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """CIFAR-C's defocus kernel: a normalised disk of ``radius`` px on a 17 x 17 grid (larger
    for radii above 8), anti-aliased by a 3-tap (5-tap above 8) Gaussian of σ = alias_blur
    (what ``cv2.GaussianBlur(disk, (3, 3), alias_blur)`` computes), cropped to its support."""
    if radius <= 8:
        grid, taps = np.arange(-8, 9), 3
    else:
        grid, taps = np.arange(-int(radius), int(radius) + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    t = np.arange(taps) - (taps - 1) / 2
    g = np.exp(-t ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    k = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    k = ndimage.correlate1d(k, g, axis=1, mode="mirror")
    nz_r, nz_c = np.nonzero(k.any(axis=1))[0], np.nonzero(k.any(axis=0))[0]
    # the support is symmetric about the centre, so the crop keeps the kernel centred
    return k[nz_r[0]:nz_r[-1] + 1, nz_c[0]:nz_c[-1] + 1]


@_corruption("defocus_blur", "disk (defocus) blur, radius 0.3..1.5 px (CIFAR-C)")
def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Correlate each channel with an anti-aliased disk, (radius, σ) = :data:`DEFOCUS_BLUR`
    [severity − 1]; borders mirrored without repeating the edge (OpenCV's default)."""
    k = _disk_kernel(*DEFOCUS_BLUR[severity - 1])
    return ndimage.correlate(x, k[:, :, None], mode="mirror")


@functools.lru_cache(maxsize=512)
def _zoom_rows(n: int, factor: float) -> np.ndarray:
    """``(n, n)`` matrix of CIFAR-C's ``clipped_zoom`` along one axis: crop the central
    ``ceil(n / factor)`` samples, resample them to ``round(crop · factor)`` by linear
    interpolation with the end samples aligned (``scipy.ndimage.zoom(order=1)``), and keep
    the central ``n``. As a matrix, all factors of a zoom blur cost one ``einsum``."""
    crop = int(np.ceil(n / factor))
    first = (n - crop) // 2
    size = int(round(crop * factor))  # scipy.ndimage.zoom's output length
    keep = (size - n) // 2
    pos = np.arange(keep, keep + n) * ((crop - 1) / (size - 1) if size > 1 else 0.0)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, crop - 1)
    hi = np.minimum(lo + 1, crop - 1)
    frac = pos - lo
    m = np.zeros((n, n))
    np.add.at(m, (np.arange(n), first + lo), 1.0 - frac)
    np.add.at(m, (np.arange(n), first + hi), frac)
    m.setflags(write=False)
    return m


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of an ``(H, W, C)`` image by ``factor`` >= 1 (bilinear, end samples
    aligned) and crop back to ``H x W``, centred: CIFAR-C's ``clipped_zoom`` (which uses
    ``scipy.ndimage.zoom(order=1)``; equal to it up to float rounding)."""
    h, w = x.shape[:2]
    y = (_zoom_rows(h, factor) @ x.reshape(h, -1)).reshape(x.shape)
    return np.matmul(_zoom_rows(w, factor)[None], y)


@_corruption("zoom_blur", "mean of zoomed copies, up to x1.06..x1.25 (CIFAR-C)")
def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(x + Σ_z clipped_zoom(x, z)) / (n + 1) over the n factors
    ``np.arange(1, stop, 0.01)``, stop = :data:`ZOOM_BLUR_STOPS` [severity − 1] (the
    factor 1 included, so x weighs twice)."""
    factors = [float(f) for f in np.arange(1, ZOOM_BLUR_STOPS[severity - 1], 0.01)]
    h, w = x.shape[:2]
    rows = np.stack([_zoom_rows(h, f) for f in factors])
    cols = np.stack([_zoom_rows(w, f) for f in factors])
    # rows then columns, each one batched matrix product over the factors
    y = np.matmul(rows, x.reshape(h, -1)).reshape(len(factors), h, w, 3)
    out = np.matmul(cols[:, None], y).sum(axis=0)  # (f, 1, w, w) @ (f, h, w, 3)
    return (x + out) / (len(factors) + 1)


# -- weather, digital ------------------------------------------------------------------------

#: (fog strength added, decay of the fractal's roughness per octave).
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
#: contrast factor c: x -> (x − mean) c + mean, the mean per channel over the image.
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
#: added to the HSV value V.
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
#: (factor, offset) of the HSV saturation: S -> S·factor + offset. Severities 1-2
#: desaturate, 3-5 saturate: the change is **not** monotone in the severity.
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))
#: PIL JPEG quality.
JPEG_QUALITY = (80, 65, 58, 50, 40)
#: side fraction of the box-downsampled image before box-upsampling back.
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
#: (alpha, sigma, affine jitter) as fractions of the image side (CIFAR-C's IMSIZE = 32):
#: displacement field = Gaussian(σ = sigma)-smoothed U(−1, 1) noise times alpha, after a
#: random affine map moving three points by up to ``affine`` px.
ELASTIC = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
           (0.1, 0.03, 0.03))


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` diamond-square height map in [0, 1] (size a power of two;
    opposite edges wrap). The random jitter starts at ±100² and shrinks by ``decay`` per
    octave, as in CIFAR-C's ``plasma_fractal``."""
    if size < 2 or size & (size - 1):
        raise ValueError(f"plasma_fractal size must be a power of two >= 2, got {size}")
    m = np.zeros((size, size))
    step, wibble = size, 100.0

    def jitter(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[0:size:step, 0:size:step]
        # squares: each centre is the mean of its four corners (wrapping), jittered
        sq = corners + np.roll(corners, -1, axis=0)
        sq = sq + np.roll(sq, -1, axis=1)
        m[half:size:step, half:size:step] = jitter(sq)
        # diamonds: each edge midpoint from the two centres and two corners beside it
        centres = m[half:size:step, half:size:step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        m[0:size:step, half:size:step] = jitter(top)
        m[half:size:step, 0:size:step] = jitter(left)
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


@_corruption("fog", "plasma-fractal fog, strength 0.2..1.5 (CIFAR-C)")
def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """x + a·F, rescaled by max(x) / (max(x) + a), F a :func:`plasma_fractal` of the given
    decay on the next power of two >= the image side (32 for CIFAR), cropped;
    (a, decay) = :data:`FOG` [severity − 1]."""
    a, decay = FOG[severity - 1]
    h, w = x.shape[:2]
    size = 1 << max(1, int(np.ceil(np.log2(max(h, w)))))
    top = x.max()
    y = x + a * plasma_fractal(size, decay, rng)[:h, :w, None]
    return y * top / (top + a)


@_corruption("contrast", "contrast reduced to x0.75..x0.15 (CIFAR-C)")
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(x − m)·c + m, m the per-channel mean of the image, c = :data:`CONTRAST`
    [severity − 1]."""
    m = x.mean(axis=(0, 1), keepdims=True)
    return (x - m) * CONTRAST[severity - 1] + m


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] ``(..., 3)`` -> HSV in [0, 1] as ``skimage.color.rgb2hsv``: V = max,
    S = (max − min) / max (0 where max = min), H = 0 for grey pixels."""
    v = x.max(axis=-1)
    delta = v - x.min(axis=-1)
    grey = delta == 0
    safe = np.where(grey, 1.0, delta)
    s = np.where(grey, 0.0, delta / np.where(v == 0, 1.0, v))
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    # the later cases win ties, as in skimage (blue over green over red)
    h = np.where(b == v, 4.0 + (r - g) / safe,
                 np.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
    h = np.where(grey, 0.0, (h / 6.0) % 1.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (``skimage.color.hsv2rgb``)."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.astype(np.int64) % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [np.select([sector == i for i in range(6)], [row[c] for row in table])
           for c in range(3)]
    return np.stack(out, axis=-1)


@_corruption("brightness", "HSV value raised by 0.05..0.3 (CIFAR-C)")
def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """V -> min(V + c, 1) in HSV, c = :data:`BRIGHTNESS` [severity − 1]. In closed form:
    x·V'/V (hue and saturation kept), and grey c for black pixels."""
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[severity - 1], 0.0, 1.0)
    return hsv_to_rgb(hsv)


@_corruption("saturate", "HSV saturation x0.3, x0.1, x1.5, x2+0.1, x2.5+0.2 (CIFAR-C)")
def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """S -> clip(S·a + b, 0, 1) in HSV, (a, b) = :data:`SATURATE` [severity − 1]. Grey
    pixels have hue 0 (red), so the offset of severities 4-5 tints them red."""
    a, b = SATURATE[severity - 1]
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0.0, 1.0)
    return hsv_to_rgb(hsv)


@_corruption("jpeg_compression", "JPEG (PIL) at quality 80..40 (CIFAR-C)")
def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Encode the 8-bit image as JPEG with PIL at quality :data:`JPEG_QUALITY`
    [severity − 1] (PIL's default 4:2:0 chroma subsampling) and decode it."""
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, format="JPEG", quality=JPEG_QUALITY[severity - 1])
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


@_corruption("pixelate", "box-downsample to 95..65 % of the side and back (CIFAR-C)")
def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """PIL box resize to ``int(side·c)`` px then box resize back, c = :data:`PIXELATE`
    [severity − 1] (30, 28, 27, 24, 20 px at 32)."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[:2]
    im = Image.fromarray(_to_uint8(x))
    small = im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255.0


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix M with ``dst = M [src; 1]`` for three (x, y) point pairs (what
    ``cv2.getAffineTransform`` solves)."""
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def elastic_fields(
    h: int, w: int, severity: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random parts of :func:`elastic_transform` for an ``h x w`` image:
    ``(inverse affine 3 x 3 on (x, y, 1) pixel coordinates, dx (h, w), dy (h, w))`` px.

    (alpha, sigma, affine) = side x :data:`ELASTIC` [severity − 1], side = min(h, w).
    Three points around the centre (±side//3) each move by U(−affine, affine) px; dx and dy
    are U(−1, 1) noise per pixel, Gaussian-smoothed with σ = sigma (reflected borders,
    kernel cut at 3 σ), times alpha. Over the severities the affine part shrinks (2.56 ->
    0.96 px at 32 px) while the smooth displacement grows (0 -> about 0.5 px rms).
    """
    side = min(h, w)
    alpha, sigma, jitter = (side * v for v in ELASTIC[check_severity(severity) - 1])
    # CIFAR-C builds the points from (H//2, W//2) and hands them to OpenCV as (x, y);
    # for square images the order does not matter, and it is kept for others.
    centre = np.array([h // 2, w // 2], dtype=np.float64)
    third = side // 3
    src = np.array([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape)
    inv = np.linalg.inv(np.vstack([_affine_from_points(src, dst), [0.0, 0.0, 1.0]]))
    dx = _gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
    return inv, dx, dy


@_corruption("elastic_transform", "random affine map, then smooth random displacement "
             "(CIFAR-C)")
def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Warp by the random affine map of :func:`elastic_fields` (bilinear, through its
    inverse, borders mirrored without repeating the edge: ``cv2.warpAffine``'s default),
    then resample bilinearly at (row + dy, col + dx) with reflected borders
    (``scipy.ndimage.map_coordinates``, as CIFAR-C). Constants: :data:`ELASTIC` x side.

    Its pixel change *falls* with severity on most images (the affine part, which dominates,
    shrinks); the local distortion grows.
    """
    h, w = x.shape[:2]
    inv, dx, dy = elastic_fields(h, w, severity, rng)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    sx = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
    sy = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
    warped = np.stack([ndimage.map_coordinates(x[..., ch], [sy, sx], order=1, mode="mirror")
                       for ch in range(3)], axis=-1)
    return np.stack([ndimage.map_coordinates(warped[..., ch], [rows + dy, cols + dx], order=1,
                                             mode="reflect") for ch in range(3)], axis=-1)


# -- corrupting images and datasets ---------------------------------------------------------


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` under (``seed``, corruption ``name``, ``severity``):
    independent streams per image, so results do not depend on batching."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed} and {index}")
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(severity),
                                  int(index)])


def check_generated(name: str) -> CorruptionFn:
    """The generator of ``name``; ``KeyError`` saying why a CIFAR-C corruption that is not
    generated here is missing, and what to do."""
    if name in NOT_GENERATED:
        raise KeyError(f"corruption {name!r} is not generated in-process ({NOT_GENERATED[name]})"
                       f"; load the official CIFAR-C arrays instead (--root DIR), or choose "
                       f"from: {', '.join(corruption_order(CORRUPTIONS.names()))}")
    return CORRUPTIONS.get(name)


def corrupt_array(image: np.ndarray, name: str, severity: int, seed: int = 0,
                  index: int = 0) -> np.ndarray:
    """One image ``(H, W, 3)`` (uint8, or float in [0, 1]) corrupted and stored as CIFAR-C
    stores it: uint8 ``(H, W, 3)``, the result truncated (``np.uint8(255 y)``). A float
    input is rounded to 8 bits first. ``index`` selects the image's random stream
    (:func:`image_rng`)."""
    fn = check_generated(name)
    x = np.asarray(image)
    u8 = x if x.dtype == np.uint8 else _to_uint8(as_float_image(x))
    y = fn(u8, severity, image_rng(seed, name, check_severity(severity), index))
    # np.uint8 of a float truncates: exactly what make_cifar_c.py's np.uint8(...) did
    return (np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0, *,
            start: int = 0) -> torch.Tensor:
    """Corrupt a batch of images, deterministically under ``seed``.

    Args:
        images: ``(N, 3, H, W)`` (or one ``(3, H, W)``) float in [0, 1].
        name: a generated corruption (``CORRUPTIONS.names()``).
        severity: 1..5.
        seed: >= 0; with ``name``, ``severity`` and the image's index it fixes the noise.
        start: index of ``images[0]`` in a larger set: image i uses stream ``start + i``,
            so corrupting a set in pieces gives the same images as all at once.

    Returns:
        float32 tensor of the input's shape and device, in [0, 1], values k/255 (8-bit, as
        the official arrays; see the module docstring).
    """
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    arr = batch.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    out = np.stack([corrupt_array(arr[i], name, severity, seed, start + i)
                    for i in range(len(arr))]) if len(arr) else np.zeros(arr.shape, np.uint8)
    res = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).to(images.device)
    return res[0] if single else res


class CorruptedSplit(Dataset):
    """A clean dataset of ``(image (3, H, W) in [0, 1], label, index)`` items seen through
    one generated corruption: item i is ``corrupt(image_i, name, severity, seed, start=i)``
    with the clean item's label and index."""

    def __init__(self, clean: Dataset, name: str, severity: int, seed: int = 0) -> None:
        check_generated(name)
        self.clean, self.name, self.seed = clean, name, int(seed)
        self.severity = check_severity(severity)

    def __len__(self) -> int:
        return len(self.clean)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, Any]:
        image, label, index = self.clean[i]
        return corrupt(image, self.name, self.severity, self.seed, start=int(i)), label, index


class GeneratedCorruptions:
    """Corruption cells generated in-process from a clean dataset (see
    :func:`retrieval_bio.eval.corruption.corruption_sweep`).

    Args:
        clean: dataset of ``(image (3, H, W) in [0, 1], one-hot label (C,), index)``.
        seed: the noise seed (:func:`image_rng`).
    """

    source = "generated"

    def __init__(self, clean: Dataset, *, seed: int = 0) -> None:
        self.clean, self.seed = clean, int(seed)
        self.corruptions = corruption_order(CORRUPTIONS.names())
        self.num_images = len(clean)  # type: ignore[arg-type]

    def dataset(self, name: str, severity: int) -> Dataset:
        return CorruptedSplit(self.clean, name, severity, self.seed)


# -- the official arrays ---------------------------------------------------------------------


def _open_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map one ``.npy`` (never unpickling), or a :class:`DatasetError` naming it."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{path} cannot be read as a .npy array ({e}); {what} must be "
                           f"a plain numpy array file: re-extract it from the CIFAR-C "
                           f"release") from e


def available_corruptions(root: str | Path) -> list[str]:
    """Names of the ``<name>.npy`` files in a CIFAR-C folder (``labels.npy`` excluded), in
    :data:`CIFAR_C_ORDER`. Raises :class:`DatasetError` for a missing folder."""
    root = Path(root)
    if not root.is_dir():
        raise missing(root, "CIFAR-C folder", CIFAR_C_LAYOUT)
    return corruption_order([p.stem for p in root.glob("*.npy") if p.name != LABELS])


def subset_indices(n: int, max_images: int | None, seed: int) -> np.ndarray:
    """The first ``max_images`` positions of a seeded permutation of ``range(n)``, sorted
    (all of them when ``max_images`` is None or >= n): the same construction as
    :func:`retrieval_bio.eval.robustness.subsample`, so a CIFAR test-set query split and
    the official arrays give the same images for the same seed."""
    if max_images is None or max_images >= n:
        return np.arange(n)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_images])


class CifarC:
    """A folder of the official CIFAR-10-C / CIFAR-100-C arrays, checked and memory-mapped.

    Args:
        root: the folder (layout in the module docstring).
        corruptions: the ones to use (default: every ``<name>.npy`` found); each is checked
            now (shape and dtype, from the file header only).
        image_size: side in px of the images :meth:`dataset` yields (default 32, the
            arrays' own); other sizes go through the toolkit's evaluation transform
            (:func:`retrieval_bio.datasets.make_transform`), as the run's own test images do.
        num_classes: width C of the one-hot labels of :meth:`dataset` (default: largest
            label + 1); labels must be < C.
        max_images: use a seeded subset of this many of the images per severity
            (:func:`subset_indices`, the same subset at every severity).
        seed: seed of that subset.

    Raises:
        DatasetError: a missing folder, ``labels.npy`` or ``<name>.npy``; an array of the
            wrong shape or dtype; labels that do not fit ``num_classes``.
    """

    source = "official"

    def __init__(
        self, root: str | Path, corruptions: Sequence[str] | None = None, *,
        image_size: int | None = None, num_classes: int | None = None,
        max_images: int | None = None, seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.available = available_corruptions(self.root)
        lab_path = self.root / LABELS
        if not lab_path.is_file():
            raise DatasetError(
                f"{lab_path} not found: a CIFAR-C folder holds labels.npy beside the "
                f"<corruption>.npy files; point --root at the unpacked CIFAR-10-C or CIFAR-100-C "
                f"folder\nExpected layout:\n{CIFAR_C_LAYOUT.rstrip()}")
        labels = _open_npy(lab_path, LABELS)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"{lab_path} holds a {labels.dtype} array of shape "
                               f"{labels.shape}; expected (50000,) integer class ids (5 "
                               f"severities x 10,000 test labels)")
        if len(labels) == 0 or len(labels) % len(SEVERITIES):
            raise DatasetError(f"{lab_path} has {len(labels)} labels, not a positive multiple "
                               f"of 5 (one block per severity 1..5; CIFAR-C's has 50,000); "
                               f"re-extract it from the release")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.min() < 0:
            raise DatasetError(f"{lab_path} holds negative class ids; expected 0..C-1")
        self.per_severity = len(self.labels) // len(SEVERITIES)
        if corruptions is None:
            if not self.available:
                raise DatasetError(f"{self.root} holds labels.npy but no <corruption>.npy "
                                   f"file\nExpected layout:\n{CIFAR_C_LAYOUT.rstrip()}")
            chosen = list(self.available)
        else:
            chosen = list(dict.fromkeys(corruptions))
            if not chosen:
                raise DatasetError("no corruption chosen; give at least one, or none for all")
        self.corruptions = chosen
        self._arrays: dict[str, np.ndarray] = {}
        for name in chosen:
            self.array(name)  # shape and dtype checked now, before any evaluation
        self.num_classes = int(self.labels.max()) + 1 if num_classes is None else num_classes
        if self.labels.max() >= self.num_classes:
            raise DatasetError(
                f"{lab_path} holds class ids up to {int(self.labels.max())} but the model has "
                f"{self.num_classes} classes: arrays of a dataset with more classes "
                f"(CIFAR-100-C for a CIFAR-10 model?); point --root at the CIFAR-C folder of "
                f"the model's dataset")
        self.image_size = image_size
        self.indices = subset_indices(self.per_severity, max_images, seed)
        self.num_images = len(self.indices)
        self._one_hot: torch.Tensor | None = None

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped ``(5n, H, W, 3)`` uint8 array of ``name`` (checked)."""
        if name in self._arrays:
            return self._arrays[name]
        path = self.root / f"{name}.npy"
        if not path.is_file():
            found = ", ".join(self.available) or "none"
            raise DatasetError(f"{path} not found: {self.root} holds no {name!r} corruption "
                               f"(found: {found}); choose from those, or check --root")
        arr = _open_npy(path, f"{name}.npy")
        n = len(self.labels)
        expected = (n, CIFAR_C_SIZE, CIFAR_C_SIZE, 3)
        if arr.dtype != np.uint8 or arr.shape != expected:
            raise DatasetError(
                f"{path} holds a {arr.dtype} array of shape {arr.shape}; expected {expected} "
                f"uint8: 5 severity blocks of {n // 5} images of 32 x 32 RGB pixels, one per "
                f"label of {LABELS} ({n}); re-extract it from the CIFAR-C release")
        self._arrays[name] = arr
        return arr

    def positions(self, severity: int) -> np.ndarray:
        """Rows of the arrays holding ``severity``'s (subset of) images."""
        s = self._severity(severity)
        return (s - 1) * self.per_severity + self.indices

    def load(self, name: str, severity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images float32 (N, 3, H, W) in [0, 1], labels int64 (N,))`` of one corruption
        and severity at the arrays' own size (exactly uint8 / 255); N = :attr:`num_images`."""
        rows = self.positions(severity)
        arr = np.asarray(self.array(name)[rows])  # only these rows are read from disk
        images = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        return images, torch.from_numpy(self.labels[rows].copy())

    def dataset(self, name: str, severity: int) -> Dataset:
        """The cell as a dataset of ``(image (3, S, S) in [0, 1], one-hot (C,), index)``
        items, S = ``image_size``, images read from disk on access."""
        from .base import one_hot
        from .images import ArraySplit
        from .transforms import make_transform

        arr = self.array(name)
        size = self.image_size or arr.shape[1]
        if self._one_hot is None:
            self._one_hot = one_hot(self.labels, self.num_classes)
        return ArraySplit(arr, self._one_hot, self.positions(severity), make_transform(size))

    def _severity(self, severity: int) -> int:
        try:
            return check_severity(severity)
        except ValueError as e:
            raise DatasetError(str(e)) from None


def load_cifar_c(
    root: str | Path, corruption: str, severity: int, *, max_images: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corruption at one severity from the official arrays in ``root``.

    Returns:
        ``(images, labels)``: float32 ``(N, 3, 32, 32)`` in [0, 1] (uint8 / 255) and int64
        ``(N,)`` class ids; N = 10,000 for the official files (or ``max_images``, a seeded
        subset, :func:`subset_indices`).

    Raises:
        DatasetError: missing folder / ``labels.npy`` / ``<corruption>.npy``, a wrong shape
            or dtype, or a severity outside 1..5 (each message names the file and the fix).
    """
    folder = CifarC(root, [corruption], max_images=max_images, seed=seed)
    return folder.load(corruption, severity)
