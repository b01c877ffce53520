"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009).

Sources: torchvision's python-pickle layout (``cifar-10-batches-py``, ``cifar-100-python``)
read with a restricted unpickler (:mod:`.safe_pickle`: only dicts, lists, strings, bytes,
numbers and numpy arrays; a pickle naming any other global is refused before anything in it
runs; no download or checksum step), or for CIFAR-10 an image folder per class.

Hashing protocols of CIFAR-10 (per class, seeded, over the pooled 60,000 images; SPEC §6),
with their default mAP cut-off k (``default_k``; 0 = the whole database):

=============  =====  ==========  =====  ==============================  ======
protocol       query  validation  train  database                        k
=============  =====  ==========  =====  ==============================  ======
``cifar10``    100    100         500    the rest (53,000), seed 001      5,000
``cifar10-1``  100    50          450    everything but query (59,000)    0
``cifar10-2``  1,000  500         4,500  train + validation (50,000)      0
=============  =====  ==========  =====  ==============================  ======

``cifar10-1`` / ``cifar10-2`` follow DeepHash-pytorch, which scores every CIFAR protocol
by mAP over the whole database (``topK = -1``); seed 001's ``cifar10`` uses mAP@5000.

``cifar10-1`` / ``cifar10-2`` have no validation split in the literature (500 / 5,000 train
per class): we carve 10 % of their train per class as validation, so train + validation is
the literature's train set and the database is exactly the literature's. Counts are
overridable with ``counts={"query": q, "validation": v, "train": t}`` (per class).

Protocol ``classification`` (CIFAR-10 and CIFAR-100): train = the official train set less a
seeded, class-stratified validation carve-out (``val_fraction``, default 0.1), validation =
the carve-out, query = the official test set, database = the official train set; k = 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .assemble import from_arrays, from_files
from .base import DatasetSplits, one_hot
from .errors import DatasetError, ProblemLog, missing
from .folder import scan_class_folders
from .images import keep_readable
from .registry import DATASETS
from .safe_pickle import load_restricted
from .splits import merge_counts, per_class_parts, shuffled, stratified_carve

log = logging.getLogger(__name__)

CIFAR10_LAYOUT = """\
  ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
      (torchvision's layout; ROOT may also be the cifar-10-batches-py folder itself)
or an image folder per class:
  ROOT/<class>/*.png                      (10 class folders), or
  ROOT/train/<class>/*.png and ROOT/test/<class>/*.png
"""
CIFAR100_LAYOUT = """\
  ROOT/cifar-100-python/train, test, meta   (torchvision's layout; fine labels are used;
      ROOT may also be the cifar-100-python folder itself)
"""

HASH_PROTOCOLS: dict[str, tuple[dict[str, int], str]] = {
    "cifar10": ({"query": 100, "validation": 100, "train": 500}, "rest"),
    "cifar10-1": ({"query": 100, "validation": 50, "train": 450}, "all-but-query"),
    "cifar10-2": ({"query": 1000, "validation": 500, "train": 4500}, "train"),
}
# mAP cut-off per protocol (0 = whole database); see the module docstring.
DEFAULT_K: dict[str, int] = {"cifar10": 5000, "cifar10-1": 0, "cifar10-2": 0,
                             "classification": 0}


def _unpickle(path: Path, layout: str) -> dict:
    if not path.is_file():
        raise missing(path, "CIFAR pickle", layout)
    # Never plain pickle.load: a pickle runs whatever globals it names (safe_pickle.py).
    d = load_restricted(path, "CIFAR pickle")
    if not isinstance(d, dict):
        raise DatasetError(
            f"{path} is not a CIFAR pickle: it holds a {type(d).__name__}, expected a dict"
        )
    # Python-2 pickles load with str keys under latin1; pickles written by Python 3 may have
    # bytes keys. Accept both.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _batch_arrays(path: Path, label_key: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path, layout)
    if "data" not in d or label_key not in d:
        raise DatasetError(f"{path} lacks the 'data' / {label_key!r} entries of a CIFAR batch")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DatasetError(
            f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {len(labels)}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # -> (N, 32, 32, 3)


def _find(root: Path, sub: str, marker: str) -> Path | None:
    """``root/sub`` if it is a folder, else ``root`` if it holds ``marker``, else None."""
    if (root / sub).is_dir():
        return root / sub
    return root if (root / marker).is_file() else None


def read_cifar10_pickles(folder: Path) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
    """Images ``(60000, 32, 32, 3)`` uint8 (train then test), labels, n_train, class names."""
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _batch_arrays(folder / name, "labels", CIFAR10_LAYOUT)
        xs.append(x)
        ys.append(y)
    names = None
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta", CIFAR10_LAYOUT)
        names = list(meta.get("label_names", [])) or None
    return np.concatenate(xs), np.concatenate(ys), sum(len(y) for y in ys[:5]), names


def _hash_parts(
    targets: np.ndarray, protocol: str, counts: Mapping[str, int] | None, seed: int,
    class_names: list[str] | None,
) -> dict[str, np.ndarray]:
    defaults, db_mode = HASH_PROTOCOLS[protocol]
    per_class = merge_counts(defaults, counts, "cifar10", protocol)
    p = per_class_parts(targets, per_class, seed, "cifar10", class_names)
    if db_mode == "rest":
        db = p["rest"]
    elif db_mode == "all-but-query":
        db = np.concatenate([p["train"], p["validation"], p["rest"]])
    else:
        db = np.concatenate([p["train"], p["validation"]])
    return {"train": p["train"], "validation": p["validation"], "query": p["query"],
            "database": shuffled(db, seed)}


def classification_parts(
    targets: np.ndarray, n_train: int, val_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Pool = official train items ``[0, n_train)`` then test items: see module docstring."""
    train_idx = np.arange(n_train)
    train, val = stratified_carve(targets, train_idx, val_fraction, seed)
    return {"train": np.random.default_rng([seed, 4]).permutation(train), "validation": val,
            "query": np.arange(n_train, len(targets)), "database": shuffled(train_idx, seed)}


@DATASETS.register("cifar10", help="CIFAR-10 (pickles or class folders); protocols "
                   "cifar10, cifar10-1, cifar10-2, classification")
def load_cifar10(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    augment: bool = False, skip_bad: bool = False, counts: Mapping[str, int] | None = None,
    val_fraction: float = 0.1, problems: ProblemLog | None = None,
    cache_dir: str | None = None, **_: object,
) -> DatasetSplits:
    """CIFAR-10 from ``root`` split per ``protocol`` (default ``cifar10``, seed 001's).

    ``default_k`` of the result: 5000 for ``cifar10``, 0 (whole database) otherwise.

    Args:
        counts: per-class overrides of the hashing protocol's query / validation / train.
        val_fraction: validation carve-out of protocol ``classification``.
        skip_bad: skip (and count, in ``info["skipped"]``) unreadable images of a class-folder
            source instead of failing.
        cache_dir: decoded-image cache folder for a class-folder source (``cache.py``); the
            pickles are decoded arrays already and ignore it.
    """
    protocol = protocol or "cifar10"
    if protocol not in (*HASH_PROTOCOLS, "classification"):
        raise DatasetError(
            f"unknown cifar10 protocol {protocol!r}; choose one of "
            f"{[*HASH_PROTOCOLS, 'classification']}"
        )
    if root is None:
        raise DatasetError("cifar10 needs root=\nExpected layout:\n" + CIFAR10_LAYOUT)
    root_p = Path(root)
    problems = problems or ProblemLog.for_load(skip_bad)
    meta = {"name": "cifar10", "num_classes": 10, "multi_label": False,
            "default_k": DEFAULT_K[protocol]}
    info = {"protocol": protocol, "seed": seed}

    folder = _find(root_p, "cifar-10-batches-py", "data_batch_1")
    if folder is not None:
        images, targets, n_train, names = read_cifar10_pickles(folder)
        parts = (classification_parts(targets, n_train, val_fraction, seed)
                 if protocol == "classification"
                 else _hash_parts(targets, protocol, counts, seed, names))
        return from_arrays(images, one_hot(targets, 10), parts, image_size=image_size,
                           augment=augment, class_names=names,
                           info={**info, "source": str(folder), "skipped": 0}, **meta)

    if not root_p.is_dir():
        raise missing(root_p, "cifar10 root folder", CIFAR10_LAYOUT)
    split_tree = (root_p / "train").is_dir() and (root_p / "test").is_dir()
    if split_tree:
        tr_paths, tr_t, names = scan_class_folders(root_p / "train")
        te_paths, te_t, te_names = scan_class_folders(root_p / "test")
        if te_names != names:
            raise DatasetError(f"class folders of {root_p / 'train'} and {root_p / 'test'} differ")
        paths, targets, n_train = tr_paths + te_paths, np.concatenate([tr_t, te_t]), len(tr_paths)
    else:
        if protocol == "classification":
            raise DatasetError(
                f"protocol 'classification' needs the official train/test split; found neither "
                f"pickles nor ROOT/train and ROOT/test under {root_p}\nExpected layout:\n"
                + CIFAR10_LAYOUT
            )
        if not any(p.is_dir() for p in root_p.iterdir()):
            raise missing(root_p / "cifar-10-batches-py", "CIFAR-10 data", CIFAR10_LAYOUT)
        paths, targets, names = scan_class_folders(root_p)
        n_train = len(paths)
    if len(names) != 10:
        raise DatasetError(
            f"cifar10 needs 10 class folders, found {len(names)} in {root_p}: {names}"
        )
    before = problems.count
    keep = keep_readable(paths, problems)
    skipped = problems.count - before
    paths = [paths[i] for i in keep]
    n_train = int(np.sum(keep < n_train))
    targets = targets[keep]
    parts = (classification_parts(targets, n_train, val_fraction, seed)
             if protocol == "classification"
             else _hash_parts(targets, protocol, counts, seed, names))
    return from_files(paths, one_hot(targets, 10), parts, image_size=image_size, augment=augment,
                      cache_dir=cache_dir, class_names=names,
                      info={**info, "source": str(root_p), "skipped": skipped}, **meta)


@DATASETS.register("cifar100", help="CIFAR-100 (torchvision pickles, fine labels); classification")
def load_cifar100(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    augment: bool = False, val_fraction: float = 0.1, **_: object,
) -> DatasetSplits:
    """CIFAR-100 with its 100 fine labels, protocol ``classification`` (see module docstring)."""
    if protocol not in (None, "classification"):
        raise DatasetError(f"cifar100 has one protocol, 'classification'; got {protocol!r}")
    if root is None:
        raise DatasetError("cifar100 needs root=\nExpected layout:\n" + CIFAR100_LAYOUT)
    root_p = Path(root)
    folder = _find(root_p, "cifar-100-python", "train") or root_p / "cifar-100-python"
    x_tr, y_tr = _batch_arrays(folder / "train", "fine_labels", CIFAR100_LAYOUT)
    x_te, y_te = _batch_arrays(folder / "test", "fine_labels", CIFAR100_LAYOUT)
    names = None
    if (folder / "meta").is_file():
        meta = _unpickle(folder / "meta", CIFAR100_LAYOUT)
        names = list(meta.get("fine_label_names", [])) or None
    targets = np.concatenate([y_tr, y_te])
    if targets.min() < 0 or targets.max() >= 100:
        raise DatasetError(
            f"{folder}: fine labels must lie in [0, 100), got {targets.min()}..{targets.max()}"
        )
    parts = classification_parts(targets, len(y_tr), val_fraction, seed)
    return from_arrays(
        np.concatenate([x_tr, x_te]), one_hot(targets, 100), parts, image_size=image_size,
        augment=augment, name="cifar100", num_classes=100, multi_label=False, default_k=0,
        class_names=names, info={"protocol": "classification", "seed": seed,
                                 "source": str(folder), "skipped": 0},
    )
