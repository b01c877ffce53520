"""ImageNet ILSVRC-2012 (Deng et al., 2009) from its standard folder tree; ImageNet-100.

Folder tree (torchvision's ``ImageFolder`` layout, the validation images sorted into one
folder per synset as by ``valprep.sh``)::

    ROOT/train/<wnid>/*.JPEG        e.g. ROOT/train/n01440764/n01440764_10026.JPEG
    ROOT/val/<wnid>/*.JPEG          e.g. ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG

``imagenet``: the 1,000 classes (every synset folder of ROOT/train, sorted; ROOT/val must
hold the same folders). Protocol ``classification`` as CIFAR's: train = the train images
less a seeded, class-stratified validation carve-out (``val_fraction``, default 0.1),
validation = the carve-out, query = the val images, database = the train images.

``imagenet100`` (Cao et al., 2017's ImageNet-100, SPEC §6, seed 001 §5) reads either
HashNet's list files (see ``listfile.py``) or this folder tree. Dispatch: list files when
``lists=`` is given or ``ROOT/train.txt`` exists, else the folder tree when ``ROOT/train``
is a folder. From the tree, protocol ``seed001`` (default), per class and seeded:

* train: 130 images from the class's train images (13,000 in all);
* query / validation: 25 + 25 images from the class's val images (ImageNet has 50 val
  images per class, so the 5,000 val images of the 100 classes split evenly, 2,500 each);
* database: every train image of the 100 classes (the train items included, as HashNet's
  ``database.txt``), shuffled once.

Counts are per class, overridable with ``counts={"train": t, "query": q, "validation": v}``.
The 100 classes come from ``classes=`` (a class-list file, one wnid per line, or a list of
wnids; label c = the c-th wnid listed) or by default the first 100 synsets of ROOT/train in
sorted order; ``num_classes`` changes that 100 (tiny test trees).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import SPLIT_NAMES, DatasetSplits, per_class_split
from .cache import CachedSplit, ImageCache, open_image_cache
from .cifar import classification_parts
from .errors import DatasetError, ProblemLog, missing
from .folder import IMAGE_SUFFIXES
from .images import Transform, keep_readable, open_rgb
from .listfile import LAYOUT as LIST_LAYOUT
from .listfile import load_imagenet100 as load_imagenet100_lists
from .registry import DATASETS
from .splits import merge_counts, shuffled
from .transforms import SplitTransform, make_transform

log = logging.getLogger(__name__)

TREE_LAYOUT = """\
  ROOT/train/<wnid>/*.JPEG   one folder per synset, e.g. ROOT/train/n01440764/
  ROOT/val/<wnid>/*.JPEG     the 50,000 val images sorted into the same synset folders
      (the flat ILSVRC2012_val_*.JPEG release must first be sorted, e.g. with valprep.sh)
"""
IMAGENET100_LAYOUT = f"""\
either list files (HashNet's data/imagenet lists):
{LIST_LAYOUT.rstrip()}
or the ImageNet folder tree:
{TREE_LAYOUT.rstrip()}
  classes: option classes= (a file with one wnid per line, or a list of wnids), else the
      first num_classes (100) synset folders of ROOT/train in sorted order
"""

#: Seed 001's ImageNet-100 protocol, per class: 130 train, 25 query, 25 validation.
SEED001_PER_CLASS = {"train": 130, "query": 25, "validation": 25}


class ClassFileSplit(Dataset):
    """Single-label image files decoded on access; the one-hot label is built per item.

    :class:`~retrieval_bio.datasets.images.ImageFileSplit` holds an ``(N, C)`` float label
    matrix: for ImageNet's 1.28 M train images and C = 1000 that is 5 GB per split. This
    split holds the class ids ``targets`` ``(N,)`` instead and returns the same items.

    Args:
        paths: image file paths, length N.
        targets: int64 class ids ``(N,)`` in [0, C).
        num_classes: C.
        transform: PIL image -> ``(3, H, W)`` float32 in [0, 1] (``make_transform``).
    """

    in_memory = False  # every access decodes a file: worth DataLoader worker processes

    def __init__(
        self, paths: Sequence[str], targets: np.ndarray, num_classes: int, transform: Transform
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.num_classes = num_classes
        self.transform = transform

    @property
    def labels(self) -> torch.Tensor:
        """float32 one-hot ``(N, C)`` of the whole split (materialised on each call)."""
        return F.one_hot(self.targets, self.num_classes).float()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        label = F.one_hot(self.targets[i], self.num_classes).float()
        return self.transform(open_rgb(self.paths[i])), label, int(i)


class CachedClassSplit(CachedSplit):
    """:class:`ClassFileSplit`'s items read from the decoded-image cache (``cache.py``).

    Args:
        cache: the pool's decoded images; ``rows``: this split's N rows of it.
        targets: int64 class ids ``(N,)`` in [0, C); ``num_classes``: C.
        transform: the split's ``make_transform``; ``paths``: the N source files.
    """

    def __init__(
        self, cache: ImageCache, rows: np.ndarray, targets: np.ndarray, num_classes: int,
        transform: SplitTransform, paths: Sequence[str],
    ) -> None:
        # no (N, C) label matrix: that is what this class avoids
        self._attach(cache, rows, transform, paths)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.num_classes = num_classes

    @property
    def labels(self) -> torch.Tensor:  # type: ignore[override]
        """float32 one-hot ``(N, C)`` of the whole split (materialised on each call)."""
        return F.one_hot(self.targets, self.num_classes).float()

    def label(self, i: int) -> torch.Tensor:
        return F.one_hot(self.targets[i], self.num_classes).float()


def class_file_splits(
    paths: Sequence[str], targets: np.ndarray, parts: Mapping[str, np.ndarray], *,
    num_classes: int, image_size: int, augment: bool, cache_dir: str | None = None,
    **meta: object,
) -> DatasetSplits:
    """:class:`DatasetSplits` of :class:`ClassFileSplit` over a pool of files (cf.
    ``assemble.from_files``); ``parts`` maps each split to indices into the pool.
    ``cache_dir``: read :class:`CachedClassSplit` from the decoded-image cache instead."""
    tfs = {s: make_transform(image_size, train=(s == "train"), augment=augment)
           for s in SPLIT_NAMES}
    cache, rows = None, None
    if cache_dir is not None:
        cache, rows = open_image_cache(cache_dir, str(meta.get("name", "imagenet")), paths,
                                       tfs["train"])
    splits: dict[str, Dataset] = {}
    for s in SPLIT_NAMES:
        idx = np.asarray(parts[s], dtype=np.int64)
        split_paths = [paths[i] for i in idx]
        if cache is not None and rows is not None:
            splits[s] = CachedClassSplit(cache, rows[idx], targets[idx], num_classes, tfs[s],
                                         split_paths)
        else:
            splits[s] = ClassFileSplit(split_paths, targets[idx], num_classes, tfs[s])
    return DatasetSplits(**splits, num_classes=num_classes, **meta)  # type: ignore[arg-type]


def list_synsets(folder: Path, layout: str) -> list[str]:
    """Sorted synset (class) folder names of ``folder``; fails naming it when absent/empty."""
    if not folder.is_dir():
        raise missing(folder, "ImageNet folder", layout)
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DatasetError(f"no synset folders in {folder}\nExpected layout:\n{layout.rstrip()}")
    return names


def scan_synsets(
    folder: Path, wnids: Sequence[str], layout: str
) -> tuple[list[str], np.ndarray]:
    """Image paths and class ids ``(N,)`` of ``folder/<wnid>/*`` for the given synsets.

    Class id c is the position of the synset in ``wnids``; files are listed in sorted order
    so that every seeded split is independent of the file system's listing order.

    Raises:
        DatasetError: a synset folder is missing or holds no image, naming the folder.
    """
    paths: list[str] = []
    targets: list[int] = []
    for c, wnid in enumerate(wnids):
        d = folder / wnid
        if not d.is_dir():
            raise missing(d, f"synset folder of class {c} ({wnid})", layout)
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"synset folder {d} holds no {IMAGE_SUFFIXES} files")
        paths += [str(p) for p in files]
        targets += [c] * len(files)
    return paths, np.asarray(targets, dtype=np.int64)


def read_class_list(classes: str | Path | Sequence[str]) -> list[str]:
    """Wnids from a class-list file (first token per line; blank and ``#`` lines skipped)
    or from a sequence of wnids, in the given order; duplicates fail."""
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        if not path.is_file():
            raise missing(path, "ImageNet class-list file", "  one wnid per line, e.g. n01440764")
        wnids = [line.split()[0] for line in path.read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        where = str(path)
    else:
        wnids, where = [str(w) for w in classes], "classes="
    dup = sorted({w for w in wnids if wnids.count(w) > 1})
    if dup:
        raise DatasetError(f"{where}: synsets listed twice: {dup[:5]}")
    if not wnids:
        raise DatasetError(f"{where}: no synset listed")
    return wnids


def _filter_readable(
    paths: list[str], targets: np.ndarray, problems: ProblemLog
) -> tuple[list[str], np.ndarray]:
    """Files found by listing a folder exist; decode them only when ``problems`` asks
    (``skip_bad`` / ``data check``): stat-ing 1.28 M files again would cost minutes."""
    if not problems.verify_images:
        return paths, targets
    keep = keep_readable(paths, problems)
    return [paths[i] for i in keep], targets[keep]


def _tree_root(root: str | None, name: str, layout: str) -> Path:
    if root is None:
        raise DatasetError(f"{name} needs root=\nExpected layout:\n{layout.rstrip()}")
    root_p = Path(root)
    if not root_p.is_dir():
        raise missing(root_p, f"{name} root folder", layout)
    return root_p


def _imagenet100_tree_parts(
    tr_t: np.ndarray, va_t: np.ndarray, n_train_items: int, per_class: Mapping[str, int],
    seed: int, wnids: Sequence[str],
) -> dict[str, np.ndarray]:
    """Index arrays into the pool "train images, then val images" (module docstring)."""
    for what, targets, need in (("train", tr_t, per_class["train"]),
                                ("val", va_t, per_class["query"] + per_class["validation"])):
        sizes = np.bincount(targets, minlength=len(wnids))
        short = np.flatnonzero(sizes < need)
        if len(short):
            c = int(short[0])
            raise DatasetError(
                f"imagenet100: class {wnids[c]!r} has {sizes[c]} {what} images, the protocol "
                f"needs {need} per class; pass smaller counts= for a small tree"
            )
    (train,) = per_class_split(tr_t, [per_class["train"]], seed)
    query, val = per_class_split(va_t, [per_class["query"], per_class["validation"]], seed + 1)
    return {"train": train, "validation": val + n_train_items, "query": query + n_train_items,
            "database": shuffled(np.arange(n_train_items), seed)}


def load_imagenet100_tree(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 224,
    augment: bool = False, skip_bad: bool = False, counts: Mapping[str, int] | None = None,
    classes: str | Sequence[str] | None = None, num_classes: int = 100,
    problems: ProblemLog | None = None, cache_dir: str | None = None, **_: object,
) -> DatasetSplits:
    """ImageNet-100 from the ImageNet folder tree, protocol ``seed001`` (module docstring).

    Args:
        counts: per-class overrides of ``{"train": 130, "query": 25, "validation": 25}``.
        classes: class-list file or wnids (label order); default the first ``num_classes``
            sorted synsets of ROOT/train.
        skip_bad: decode every image once, skip and count the unreadable ones.
        cache_dir: folder of the decoded-image cache (``cache.py``); ``None``: decode on access.
    """
    protocol = protocol or "seed001"
    if protocol != "seed001":
        raise DatasetError(
            f"imagenet100 from the folder tree has protocol 'seed001'; got {protocol!r} "
            f"('lists' needs list files)"
        )
    root_p = _tree_root(root, "imagenet100", IMAGENET100_LAYOUT)
    if classes is not None:
        wnids = read_class_list(classes)
    else:
        found = list_synsets(root_p / "train", IMAGENET100_LAYOUT)
        if len(found) < num_classes:
            raise DatasetError(
                f"imagenet100 takes the first {num_classes} synsets of {root_p / 'train'}, "
                f"found {len(found)}; pass classes= or num_classes="
            )
        wnids = found[:num_classes]
    per_class = merge_counts(SEED001_PER_CLASS, counts, "imagenet100", protocol)
    problems = problems or ProblemLog.for_load(skip_bad)
    before = problems.count
    tr_paths, tr_t = _filter_readable(
        *scan_synsets(root_p / "train", wnids, IMAGENET100_LAYOUT), problems)
    va_paths, va_t = _filter_readable(
        *scan_synsets(root_p / "val", wnids, IMAGENET100_LAYOUT), problems)
    parts = _imagenet100_tree_parts(tr_t, va_t, len(tr_paths), per_class, seed, wnids)
    return class_file_splits(
        tr_paths + va_paths, np.concatenate([tr_t, va_t]), parts, num_classes=len(wnids),
        image_size=image_size, augment=augment, cache_dir=cache_dir, name="imagenet100",
        multi_label=False, default_k=1000, class_names=list(wnids),
        info={"protocol": protocol, "seed": seed, "source": str(root_p), "layout": "tree",
              "skipped": problems.count - before},
    )


def _has_list_files(root: str | None, lists: str | None) -> bool:
    return lists is not None or (root is not None and (Path(root) / "train.txt").is_file())


@DATASETS.register("imagenet100", help="ImageNet-100: list files or the ImageNet folder tree; "
                   "k = 1000; protocols seed001 (default), lists")
def load_imagenet100(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 224,
    lists: str | None = None, **kw: object,
) -> DatasetSplits:
    """ImageNet-100 (Cao et al., 2017): list files if ``lists=`` is given or ROOT/train.txt
    exists (``listfile.load_imagenet100``), else the folder tree ROOT/train, ROOT/val
    (:func:`load_imagenet100_tree`). Both give C = 100 one-hot labels and k = 1000."""
    if _has_list_files(root, lists):
        return load_imagenet100_lists(root, protocol=protocol, seed=seed, image_size=image_size,
                                      lists=lists, **kw)
    if root is not None and (Path(root) / "train").is_dir():
        return load_imagenet100_tree(root, protocol=protocol, seed=seed, image_size=image_size,
                                     **kw)  # type: ignore[arg-type]
    where = "imagenet100 needs root=" if root is None else (
        f"imagenet100: neither list files ({Path(root) / 'train.txt'}) nor a folder tree "
        f"({Path(root) / 'train'}) found")
    raise DatasetError(f"{where}\nExpected layout:\n{IMAGENET100_LAYOUT.rstrip()}")


@DATASETS.register("imagenet", help="ImageNet ILSVRC-2012, 1,000 classes, folder tree; "
                   "protocol classification")
def load_imagenet(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 224,
    augment: bool = False, skip_bad: bool = False, val_fraction: float = 0.1,
    problems: ProblemLog | None = None, cache_dir: str | None = None, **_: object,
) -> DatasetSplits:
    """ImageNet classification from ROOT/train/<wnid>, ROOT/val/<wnid> (module docstring).

    Args:
        val_fraction: per-class share of the train images carved out as validation.
        skip_bad: decode every image once, skip and count the unreadable ones.
        cache_dir: folder of the decoded-image cache (``cache.py``); ``None``: decode on access.
    """
    if protocol not in (None, "classification"):
        raise DatasetError(f"imagenet has one protocol, 'classification'; got {protocol!r}")
    root_p = _tree_root(root, "imagenet", TREE_LAYOUT)
    wnids = list_synsets(root_p / "train", TREE_LAYOUT)
    val_wnids = list_synsets(root_p / "val", TREE_LAYOUT)
    if val_wnids != wnids:
        only_train = sorted(set(wnids) - set(val_wnids))[:5]
        only_val = sorted(set(val_wnids) - set(wnids))[:5]
        raise DatasetError(
            f"synset folders of {root_p / 'train'} and {root_p / 'val'} differ (only in train: "
            f"{only_train}, only in val: {only_val})\nExpected layout:\n{TREE_LAYOUT.rstrip()}"
        )
    problems = problems or ProblemLog.for_load(skip_bad)
    before = problems.count
    tr_paths, tr_t = _filter_readable(*scan_synsets(root_p / "train", wnids, TREE_LAYOUT),
                                      problems)
    va_paths, va_t = _filter_readable(*scan_synsets(root_p / "val", wnids, TREE_LAYOUT),
                                      problems)
    targets = np.concatenate([tr_t, va_t])
    parts = classification_parts(targets, len(tr_paths), val_fraction, seed)
    return class_file_splits(
        tr_paths + va_paths, targets, parts, num_classes=len(wnids), image_size=image_size,
        augment=augment, cache_dir=cache_dir, name="imagenet", multi_label=False,
        default_k=0, class_names=wnids,
        info={"protocol": "classification", "seed": seed, "source": str(root_p),
              "skipped": problems.count - before},
    )
