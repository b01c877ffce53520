"""Datasets: every loader returns :class:`DatasetSplits` of images in [0, 1].

``load(name, root, ...)`` is the single entry point; ``DATASETS.names()`` lists them.
"""

from __future__ import annotations

# Importing a loader module registers its datasets.
from . import cifar, coco, digits, idx, imagenet, listfile  # noqa: F401
from .base import SPLIT_NAMES, DatasetSplits, TensorSplit
from .cache import CachedSplit
from .check import CheckReport, check
from .errors import DatasetError, Problem, ProblemLog
from .registry import DATASETS
from .transforms import make_transform


def load(
    name: str, root: str | None = None, *, protocol: str | None = None, seed: int = 0,
    image_size: int = 32, cache_dir: str | None = None, **kwargs: object,
) -> DatasetSplits:
    """Load dataset ``name`` from ``root`` and split it per ``protocol`` with ``seed``.

    Args:
        name: a registered dataset (``DATASETS.names()``).
        root: folder holding the data in its standard on-disk format (unused by ``digits``).
        protocol: split protocol; ``None`` picks the dataset's default.
        seed: seeds every random choice of the split.
        image_size: side length in px of the returned images.
        cache_dir: opt-in decoded-image cache folder (docs/data-cache.md): datasets read
            from image files decode them once into a uint8 memory map there (rebuilt when a
            list or image file changes) and every split reads from it, bit-identical to
            decoding without augmentation. Datasets held in memory already (digits, CIFAR
            pickles, IDX files) ignore it. ``None``: decode on every access.
        kwargs: loader options, e.g. ``augment`` (train-split augmentation), ``skip_bad``
            (skip and count unreadable items), ``counts`` (protocol sizes), ``lists``.

    Raises:
        DatasetError: a file is missing (the message shows the expected layout), a list line
            or image is bad (names file and line), the data is too small for the protocol, or
            the cache folder is not writable.
    """
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return DATASETS.get(name)(root, protocol=protocol, seed=seed, image_size=image_size, **kwargs)


__all__ = [
    "DATASETS", "CachedSplit", "CheckReport", "DatasetError", "DatasetSplits", "Problem",
    "ProblemLog", "SPLIT_NAMES", "TensorSplit", "check", "load", "make_transform",
]
