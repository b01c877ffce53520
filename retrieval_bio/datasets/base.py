"""The split interface every dataset returns.

A dataset loader returns :class:`DatasetSplits`: four torch ``Dataset`` objects
(train / validation / query / database). Each item is a tuple
``(image, label, index)``:

* ``image``: float32 tensor ``(3, H, W)`` with pixel values in [0, 1] (normalisation
  happens inside the model, SPEC §1);
* ``label``: float32 multi-hot vector ``(C,)`` (single-label data is one-hot);
* ``index``: int, the item's position inside its split (stable ids for codes files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLIT_NAMES = ("train", "validation", "query", "database")


@dataclass
class DatasetSplits:
    """Train / validation / query / database splits of one dataset.

    Attributes:
        name: registry name of the dataset (``"digits"``, ``"cifar10"``...).
        num_classes: C, the length of every label vector.
        multi_label: whether an item may carry more than one label (NUS-WIDE, COCO).
        default_k: the mAP@k cut-off of the dataset's protocol (k <= 0: whole database).
        class_names: optional human-readable class names, length C.
    """

    name: str
    train: Dataset
    validation: Dataset
    query: Dataset
    database: Dataset
    num_classes: int
    multi_label: bool = False
    default_k: int = 0
    class_names: Sequence[str] | None = None
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLIT_NAMES}


class TensorSplit(Dataset):
    """An in-memory split: images ``(N, 3, H, W)`` in [0, 1] and labels ``(N, C)``.

    Images are stored at their native size and resized on access to ``image_size``
    (bilinear, antialiased), so one tensor serves several input sizes.
    """

    in_memory = True  # items are tensor views: DataLoader workers would only add overhead

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, image_size: int | None = None
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be (N, C) with N={images.shape[0]}, got {tuple(labels.shape)}"
            )
        self.labels = labels.float()
        if image_size is not None and images.shape[-1] != image_size:
            images = resize_images(images, image_size)
        self.images = images.float().clamp_(0.0, 1.0)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[i], self.labels[i], int(i)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, 3, H, W)`` images in [0, 1] to ``size`` x ``size`` (bilinear)."""
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False,
        antialias=size < images.shape[-1],
    )
    return out.clamp_(0.0, 1.0)


def one_hot(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Integer class ids ``(N,)`` -> float32 one-hot ``(N, C)``."""
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return F.one_hot(t, num_classes).float()


def per_class_split(
    targets: np.ndarray, counts: Sequence[int], seed: int
) -> list[np.ndarray]:
    """Seeded per-class split of single-label data.

    For every class, a seeded permutation of its items is cut into consecutive parts of
    ``counts[0]``, ``counts[1]``... items; the last part may be ``-1`` meaning "the rest".
    Returns one index array per part, each shuffled once (seeded) so that no order-based
    tie-break can correlate with class (SPEC §5).
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        start = 0
        for p, n in enumerate(counts):
            stop = len(idx) if n < 0 else start + n
            if stop > len(idx):
                need = sum(max(x, 0) for x in counts)
                raise ValueError(f"class {c} has {len(idx)} items, the protocol needs {need}")
            parts[p].append(idx[start:stop])
            start = stop
    return [rng.permutation(np.concatenate(p)) for p in parts]
