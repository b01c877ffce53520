"""Turn a pool of items plus per-split index arrays into :class:`DatasetSplits`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import SPLIT_NAMES, DatasetSplits
from .images import ArraySplit, ImageFileSplit
from .transforms import make_transform


def _transforms(image_size: int, augment: bool, mode: str) -> dict[str, object]:
    return {
        s: make_transform(image_size, train=(s == "train"), augment=augment, mode=mode)
        for s in SPLIT_NAMES
    }


def from_arrays(
    images: np.ndarray, labels: torch.Tensor, parts: Mapping[str, np.ndarray], *,
    image_size: int, augment: bool = False, transform_mode: str = "auto", **meta: object,
) -> DatasetSplits:
    """Splits over an in-memory uint8 pool ``images`` ``(M, H, W[, 3])``, labels ``(M, C)``.

    ``parts`` maps each of train / validation / query / database to indices into the pool;
    ``meta`` is passed to :class:`DatasetSplits` (name, num_classes, default_k...).
    """
    tf = _transforms(image_size, augment, transform_mode)
    splits = {s: ArraySplit(images, labels, parts[s], tf[s]) for s in SPLIT_NAMES}
    return DatasetSplits(**splits, **meta)  # type: ignore[arg-type]


def from_files(
    paths: Sequence[str], labels: torch.Tensor, parts: Mapping[str, np.ndarray], *,
    image_size: int, augment: bool = False, transform_mode: str = "auto",
    origins: Sequence[tuple[str, int | None]] | None = None, **meta: object,
) -> DatasetSplits:
    """Splits over image files ``paths`` with labels ``(M, C)``; see :func:`from_arrays`.

    ``origins``: per pooled item, the ``(list file, line)`` it was read from, so an image
    that fails later is reported with its list line.
    """
    tf = _transforms(image_size, augment, transform_mode)
    splits = {}
    for s in SPLIT_NAMES:
        idx = np.asarray(parts[s], dtype=np.int64)
        where = [origins[i] for i in idx] if origins is not None else None
        splits[s] = ImageFileSplit([paths[i] for i in idx], labels[torch.as_tensor(idx)], tf[s],
                                   where)
    return DatasetSplits(**splits, **meta)  # type: ignore[arg-type]
