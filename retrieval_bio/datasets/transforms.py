"""Image transforms: PIL image -> float32 tensor ``(3, size, size)`` in [0, 1].

No mean/std normalisation here: it is the first module inside every model (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

CROP_THRESHOLD = 64
"""``mode="auto"`` crops ImageNet-style above this size and resizes directly at or below it."""


def make_transform(
    image_size: int, train: bool = False, augment: bool = False, mode: str = "auto"
) -> Callable[[Image.Image], torch.Tensor]:
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
        a callable mapping an RGB PIL image to float32 ``(3, image_size, image_size)`` in [0, 1].
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if mode == "auto":
        mode = "crop" if image_size > CROP_THRESHOLD else "resize"
    aug = train and augment
    steps: list[Callable] = []
    if mode == "crop":
        steps.append(T.Resize(round(image_size * 256 / 224)))
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
    return T.Compose(steps)
