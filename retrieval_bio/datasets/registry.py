"""Dataset registry.

A loader is ``fn(root, *, protocol, seed, image_size, **kw) -> DatasetSplits``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .base import DatasetSplits

DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset")
