"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes.

No download: the data ships inside scikit-learn. The embedded default for demos and tests.
Protocol (per class, seeded): 100 train, 20 validation, 20 query; the database is every
item that is neither query nor validation (so it includes train, like CIFAR-10 protocol
``cifar10-1``), shuffled once.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .base import DatasetSplits, TensorSplit, one_hot, per_class_split
from .errors import DatasetError
from .registry import DATASETS

TRAIN_PER_CLASS = 100
VAL_PER_CLASS = 20
QUERY_PER_CLASS = 20

log = logging.getLogger(__name__)


def digits_arrays() -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 digits as ``(N, 3, 8, 8)`` float32 in [0, 1] and class ids ``(N,)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    return x[:, None].expand(-1, 3, -1, -1).contiguous(), d.target.astype(np.int64)


@DATASETS.register("digits", help="scikit-learn's bundled 8x8 digits (1,797 images, 10 classes)")
def load_digits_splits(
    root: str | None = None, *, protocol: str | None = None, seed: int = 0,
    image_size: int = 32, **_: object,
) -> DatasetSplits:
    """Load ``digits`` resized to ``image_size`` px. The data ships with scikit-learn, so a
    ``root`` is not read (a warning says so: a user who meant another dataset sees it)."""
    if protocol not in (None, "digits"):
        raise DatasetError(f"dataset 'digits' has one protocol, 'digits'; got {protocol!r}")
    if root is not None:
        log.warning("dataset 'digits' ships with scikit-learn and reads no files: root %s is "
                    "not used (did you mean another --dataset?)", root)
    images, targets = digits_arrays()
    labels = one_hot(targets, 10)
    train, val, query, rest = per_class_split(
        targets, [TRAIN_PER_CLASS, VAL_PER_CLASS, QUERY_PER_CLASS, -1], seed
    )
    database = np.random.default_rng(seed + 1).permutation(np.concatenate([train, rest]))

    def part(idx: np.ndarray) -> TensorSplit:
        t = torch.as_tensor(idx)
        return TensorSplit(images[t], labels[t], image_size)

    return DatasetSplits(
        name="digits", train=part(train), validation=part(val), query=part(query),
        database=part(database), num_classes=10, multi_label=False, default_k=0,
        class_names=[str(i) for i in range(10)],
        info={"source": "sklearn.datasets.load_digits", "protocol": "digits"},
    )
