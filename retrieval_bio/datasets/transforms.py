"""Image transforms: PIL image -> float32 tensor ``(3, size, size)`` in [0, 1].

No mean/std normalisation here: it is the first module inside every model (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

CROP_THRESHOLD = 64
"""``mode="auto"`` crops ImageNet-style above this size and resizes directly at or below it."""


class SplitTransform(T.Compose):
    """What :func:`make_transform` returns: a torchvision ``Compose`` that knows its settings.

    Calling it runs every step (decode path). The decoded-image cache (``cache.py``) instead
    runs :meth:`prepare` once per image at build time and :meth:`finish` on every access;
    ``finish(prepare(im))`` equals ``self(im)`` bit for bit whenever the transform is
    deterministic (no augmentation), for both modes:

    * ``"resize"``: ``prepare`` is the ``(s, s)`` resize, ``finish`` the rest (optional padded
      random crop and flip, ``ToTensor``): the same steps on the same image.
    * ``"crop"``: the short-side resize to ``r = round(s * 256 / 224)`` gives images of
      varying width, so ``prepare`` stores an ``r x r`` window of it, placed so that the
      centre crop of ``s`` inside the window is the very pixels the centre crop of the whole
      resized image takes (torchvision rounds the two offsets separately; the window's
      offset absorbs the difference, see :func:`_window_offset`). ``finish`` runs the crop,
      the optional flip and ``ToTensor``. With augmentation the random crop is drawn inside
      that window (the decode path may also crop near the far ends of a non-square image's
      long side); square images see the same crop distribution either way.

    Attributes:
        image_size: s, the output side in px.
        mode: ``"crop"`` or ``"resize"`` (``"auto"`` resolved).
        augment: whether the random crop + flip is active (train split with augmentation).
    """

    def __init__(self, steps: list[Callable], image_size: int, mode: str, augment: bool) -> None:
        super().__init__(steps)
        self.image_size, self.mode, self.augment = image_size, mode, augment
        self._rest = T.Compose(steps[1:])  # everything after the (deterministic) resize
        if not isinstance(steps[-1], T.ToTensor):
            raise ValueError("the last step must be ToTensor")

    @property
    def stored_side(self) -> int:
        """Side in px of the image :meth:`prepare` returns: r (crop mode) or s (resize)."""
        return crop_resize_side(self.image_size) if self.mode == "crop" else self.image_size

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The deterministic first step: RGB PIL image -> uint8 ``(side, side, 3)``."""
        resized = self.transforms[0](image)
        if self.mode == "crop":
            side, w, h = self.stored_side, resized.width, resized.height
            left = _window_offset(w, side, self.image_size)
            top = _window_offset(h, side, self.image_size)
            resized = resized.crop((left, top, left + side, top + side))
        return np.array(resized, dtype=np.uint8)  # a writable copy (asarray's is read-only)

    def finish(self, stored: np.ndarray) -> torch.Tensor:
        """The remaining steps on a :meth:`prepare` result -> float32 ``(3, s, s)`` in [0, 1].

        Runs on a uint8 ``(3, H, W)`` tensor rather than a PIL image (no conversion per
        item): torchvision's crops and flip take the same offsets and random draws on
        tensors as on PIL images and copy the same pixels, and the last step is
        ``ToTensor``'s own arithmetic.
        """
        # writable and C-ordered (a copy only when not already): torch refuses read-only arrays
        x = torch.from_numpy(np.require(stored, np.uint8, ("C", "W"))).permute(2, 0, 1)
        for step in self._rest.transforms[:-1]:  # crop / flip; the last step is ToTensor
            x = step(x)
        return x.contiguous().to(dtype=torch.get_default_dtype()).div(255)


def crop_resize_side(image_size: int) -> int:
    """Short side in px after crop mode's resize: ``round(image_size * 256 / 224)``."""
    return round(image_size * 256 / 224)


def _window_offset(length: int, side: int, crop: int) -> int:
    """Offset along one axis of a ``side``-long window of a ``length``-long image such that
    torchvision's centre crop of ``crop`` inside the window starts where its centre crop of
    the whole image starts: ``round((length - crop) / 2) - round((side - crop) / 2)``.

    Both roundings are torchvision's (Python's round half to even), so the offset differs from
    ``(length - side) / 2`` by at most 1 and always lies in ``[0, length - side]``.
    """
    return int(round((length - crop) / 2.0)) - int(round((side - crop) / 2.0))


def make_transform(
    image_size: int, train: bool = False, augment: bool = False, mode: str = "auto"
) -> SplitTransform:
    """Build the transform of one split.

    Args:
        image_size: side length in px of the output.
        train: whether this is the train split (augmentation applies only there).
        augment: random crop + horizontal flip on the train split; never at evaluation.
        mode: ``"crop"``: ImageNet-style, resize the shorter side to
            ``round(image_size * 256 / 224)`` then centre-crop ``image_size`` (256 -> 224 for
            AlexNet / VGG / ResNet inputs, as DeepHash-pytorch and HyP² do); with augmentation
            a random crop of that size replaces the centre crop.
            ``"resize"``: resize straight to ``image_size`` x ``image_size`` (32 px
            CIFAR-size work); augmentation is a random crop with ``image_size // 8`` px of
            reflect padding. ``"auto"``: ``"crop"`` when ``image_size > 64``, else ``"resize"``.

    Returns:
        a :class:`SplitTransform` mapping an RGB PIL image to float32
        ``(3, image_size, image_size)`` in [0, 1].
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if mode == "auto":
        mode = "crop" if image_size > CROP_THRESHOLD else "resize"
    aug = train and augment
    steps: list[Callable] = []
    if mode == "crop":
        steps.append(T.Resize(crop_resize_side(image_size)))
        steps.append(T.RandomCrop(image_size) if aug else T.CenterCrop(image_size))
    elif mode == "resize":
        steps.append(T.Resize((image_size, image_size)))
        if aug:
            pad = max(1, image_size // 8)
            steps.append(T.RandomCrop(image_size, padding=pad, padding_mode="reflect"))
    else:
        raise ValueError(f"mode must be 'auto', 'crop' or 'resize', got {mode!r}")
    if aug:
        steps.append(T.RandomHorizontalFlip())
    steps.append(T.ToTensor())  # uint8 HWC -> float32 CHW in [0, 1]
    return SplitTransform(steps, image_size, mode, aug)
