"""Turn a pool of items plus per-split index arrays into :class:`DatasetSplits`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .base import SPLIT_NAMES, DatasetSplits
from .cache import CachedSplit, open_image_cache
from .images import ArraySplit, ImageFileSplit
from .transforms import SplitTransform, make_transform


def _transforms(image_size: int, augment: bool, mode: str) -> dict[str, SplitTransform]:
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
    origins: Sequence[tuple[str, int | None]] | None = None,
    cache_dir: str | Path | None = None, **meta: object,
) -> DatasetSplits:
    """Splits over image files ``paths`` with labels ``(M, C)``; see :func:`from_arrays`.

    ``origins``: per pooled item, the ``(list file, line)`` it was read from, so an image
    that fails later is reported with its list line. ``cache_dir``: decode the whole pool
    once into the cache in that folder (``cache.py``) and read every split from it.
    """
    tf = _transforms(image_size, augment, transform_mode)
    cache, rows = None, None
    if cache_dir is not None:
        # One cache for the whole pool (not per split): seeds and protocols only change the
        # index arrays, so they share it.
        cache, rows = open_image_cache(cache_dir, str(meta.get("name", "dataset")), paths,
                                       tf["train"], origins)
    splits = {}
    for s in SPLIT_NAMES:
        idx = np.asarray(parts[s], dtype=np.int64)
        split_paths, split_labels = [paths[i] for i in idx], labels[torch.as_tensor(idx)]
        if cache is not None and rows is not None:
            splits[s] = CachedSplit(cache, rows[idx], split_labels, tf[s], split_paths)
            continue
        where = [origins[i] for i in idx] if origins is not None else None
        splits[s] = ImageFileSplit(split_paths, split_labels, tf[s], where)
    return DatasetSplits(**splits, **meta)  # type: ignore[arg-type]
