"""Datasets: every loader returns :class:`DatasetSplits` of images in [0, 1].

``load(name, root, ...)`` is the single entry point; ``DATASETS.names()`` lists them.
"""

from __future__ import annotations

from . import digits  # noqa: F401  (registers "digits")
from .base import SPLIT_NAMES, DatasetSplits, TensorSplit
from .registry import DATASETS


def load(
    name: str, root: str | None = None, *, protocol: str | None = None, seed: int = 0,
    image_size: int = 32, **kwargs: object,
) -> DatasetSplits:
    """Load dataset ``name`` from ``root`` and split it per ``protocol`` with ``seed``.

    Args:
        name: a registered dataset (``DATASETS.names()``).
        root: folder holding the data in its standard on-disk format (unused by ``digits``).
        protocol: split protocol; ``None`` picks the dataset's default.
        seed: seeds every random choice of the split.
        image_size: side length in px of the returned images.
    """
    return DATASETS.get(name)(root, protocol=protocol, seed=seed, image_size=image_size, **kwargs)


__all__ = ["DATASETS", "DatasetSplits", "SPLIT_NAMES", "TensorSplit", "load"]
