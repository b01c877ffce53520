"""Lazily decoded splits: image files on disk, or uint8 arrays held in memory.

Both return ``(image, label, index)`` like every split (see ``base.py``): ``image`` float32
``(3, H, W)`` in [0, 1] from the split's transform, ``label`` float32 multi-hot ``(C,)``,
``index`` the item's position inside its split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError, ProblemLog

Transform = Callable[[Image.Image], torch.Tensor]


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully and convert it to RGB (grayscale -> 3 equal channels).

    Raises:
        DatasetError: naming the file when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as im:
            im.load()  # force the full decode: truncated files fail here, not later
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from e


def keep_readable(
    paths: Sequence[str], problems: ProblemLog,
    origin: Sequence[tuple[str, int | None]] | None = None,
) -> np.ndarray:
    """Indices of the ``paths`` to keep, checking files per ``problems``' settings.

    Every file must exist; with ``problems.verify_images`` every file is decoded too. Bad
    files go to ``problems.report`` (which raises in ``"raise"`` mode). ``origin`` gives, per
    path, the (list file, line) it came from, so a problem names both.
    """
    keep = []
    for i, p in enumerate(paths):
        where, line = origin[i] if origin is not None else (p, None)
        named = "" if where == p else f" {p}"
        if not Path(p).is_file():
            problems.report(where, f"image file not found{named}", line)
            continue
        if problems.verify_images:
            try:
                open_rgb(p)
            except DatasetError as e:
                problems.report(where, f"corrupt image{named}: {e.__cause__}", line)
                continue
        keep.append(i)
    return np.asarray(keep, dtype=np.int64)


class ImageFileSplit(Dataset):
    """Image files decoded on access with PIL (RGB) and passed through ``transform``.

    Args:
        paths: image file paths, length N.
        labels: multi-hot labels ``(N, C)``.
        transform: PIL image -> ``(3, H, W)`` float32 in [0, 1] (``make_transform``).
        origins: optional ``(list file, 1-based line)`` per item, named when the image
            cannot be read (a file that broke after loading, e.g. during the final encode).
    """

    in_memory = False  # every access decodes a file: worth DataLoader worker processes

    def __init__(
        self, paths: Sequence[str], labels: torch.Tensor, transform: Transform,
        origins: Sequence[tuple[str, int | None]] | None = None,
    ) -> None:
        if len(paths) != labels.shape[0]:
            raise ValueError(f"{len(paths)} paths but {labels.shape[0]} labels")
        if origins is not None and len(origins) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(origins)} origins")
        self.paths = list(paths)
        self.labels = labels.float()
        self.transform = transform
        self.origins = list(origins) if origins is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        try:
            image = open_rgb(self.paths[i])
        except DatasetError as e:
            if self.origins is None or self.origins[i][1] is None:
                raise
            where, line = self.origins[i]
            raise DatasetError(f"{e} (listed at {where}:{line})") from e.__cause__
        return self.transform(image), self.labels[i], int(i)


class ArraySplit(Dataset):
    """Items ``indices`` of an in-memory uint8 image array, transformed on access.

    Args:
        images: uint8 ``(M, H, W, 3)`` or grayscale ``(M, H, W)`` (copied to 3 channels).
        labels: multi-hot labels ``(M, C)`` of all M items.
        indices: the N items of ``images`` forming this split, in split order.
        transform: PIL image -> ``(3, H', W')`` float32 in [0, 1].
    """

    in_memory = True  # decoded already: no file access, cheap in the main process

    def __init__(
        self, images: np.ndarray, labels: torch.Tensor, indices: np.ndarray, transform: Transform
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (M, H, W[, 3]), got {images.dtype} "
                             f"{images.shape}")
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = labels.float()[torch.as_tensor(self.indices)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        im = Image.fromarray(self.images[self.indices[i]]).convert("RGB")
        return self.transform(im), self.labels[i], int(i)
