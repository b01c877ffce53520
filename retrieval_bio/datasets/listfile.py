"""List-file datasets: the HashNet / DeepHash-pytorch / HyP² format (SPEC §6).

One image per line, ``relative/path.jpg 0 1 0 …``: a path relative to the data root, then a
C-long 0/1 label vector. A list folder holds ``train.txt``, ``test.txt`` (the queries),
``database.txt`` and optionally ``val.txt``. Every line is validated (vector length against
``num_classes`` or the first line, entries in {0, 1}, image file present); a problem names
the list file and line.

Lines are parsed from the right, so image paths may hold spaces (``my photos/cat [1].png``):
the last C whitespace-separated fields are the labels, the rest of the line (inner
whitespace kept, outer whitespace dropped) is the path. While C is unknown (no
``num_classes``: the first valid line) C is the number of trailing fields that are 0 or 1;
on that line a path whose last space-separated part is ``0`` or ``1`` (``scan 1.jpg`` is
fine, ``scan 1`` is not) cannot be told from a label, so pass ``num_classes`` for such data.

Protocols:

* ``lists``: train.txt -> train, test.txt -> query, database.txt -> database; validation =
  val.txt if present, else a seeded carve-out of ``counts["validation"]`` train lines
  (default 10 % of train.txt, at least 1), removed from train.
* ``seed001`` for ``nuswide21``: seed 001's 2,100 validation images carved (seeded) from
  train.txt (the literature's 10,500 train lines leave 8,400 for training).
* ``seed001`` for ``imagenet100``: seed 001's 5,000 test images split evenly, seeded, into
  2,500 query and 2,500 validation; train.txt (13,000) and database.txt unchanged.

The database is shuffled once (seeded) in every protocol.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .assemble import from_files
from .base import DatasetSplits
from .errors import DatasetError, ProblemLog, missing
from .images import keep_readable
from .registry import DATASETS
from .splits import carve, merge_counts, shuffled

#: registered loaders that pass their extra options on to :func:`load_list_splits`
LIST_LOADERS = ("list", "nuswide21", "imagenet100")

LIST_FILES = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}
VAL_FILE = "val.txt"
_FIELD = re.compile(r"\S+")  # one whitespace-separated field of a line
_BITS = ("0", "1")

LAYOUT = """\
  LISTS/train.txt, LISTS/test.txt, LISTS/database.txt   (optional LISTS/val.txt)
      one image per line: 'relative/path.jpg 0 1 0 ...' (a path, then C labels in {0, 1})
  ROOT/<relative/path.jpg>                              (paths are relative to ROOT)
  LISTS defaults to ROOT (option lists=DIR / --lists DIR)
"""


def read_list_file(
    list_path: str | Path, data_root: str | Path, problems: ProblemLog,
    num_classes: int | None = None, source: str | None = None,
) -> tuple[list[str], np.ndarray, list[tuple[str, int]], int | None, str | None]:
    """Parse and validate one list file.

    A line is ``<path> <C labels>``, parsed from the right: the last C whitespace-separated
    fields are the 0/1 labels and everything before them (inner whitespace kept, outer
    whitespace dropped) is the path, so paths may hold spaces, tabs and brackets. While C is
    unknown (``num_classes=None``, first valid line) it is the number of trailing fields that
    are ``0`` or ``1``: there a path whose last space-separated part is ``0`` or ``1`` would be
    read as a label; pass ``num_classes`` for such data. On later lines such a path is read as
    a path when ``data_root/<path>`` is a file, else the line is reported as holding too many
    labels (the usual cause: one label too many).

    Args:
        list_path: the list file.
        data_root: folder the image paths are relative to.
        problems: receives bad lines (raises in ``"raise"`` mode); bad lines are dropped.
        num_classes: expected vector length C; ``None`` takes it from the first valid line.
        source: where ``num_classes`` came from, for messages (e.g. ``"train.txt:1"``).

    Returns:
        ``(paths, labels, origins, C, source)``: image paths joined to ``data_root``; uint8
        labels ``(N, C)``; per line ``(list file, 1-based line number)``; the vector length
        used and where it was set.
        Image files are not checked here (see :func:`images.keep_readable`), except for a
        stat of the rare ambiguous path described above.
    """
    list_path = Path(list_path)
    data_root = Path(data_root)
    if not list_path.is_file():
        raise missing(list_path, "list file", LAYOUT)
    paths, rows, origins = [], [], []
    if source is None and num_classes is not None:
        source = f"num_classes={num_classes}"
    # utf-8-sig: a byte-order mark (some Windows editors write one) must not join the first path
    with open(list_path, encoding="utf-8-sig") as f:
        for lineno, text in enumerate(f, start=1):
            # (start, end) of every whitespace-separated field, so that the path can be cut
            # out of the line with its inner whitespace intact.
            spans = [m.span() for m in _FIELD.finditer(text)]
            if not spans:
                continue  # blank lines (e.g. a trailing newline) carry nothing
            fields = [text[a:b] for a, b in spans]
            shown = text.strip()
            # the trailing run of 0/1 fields, leaving at least one field for the path
            run = next((i for i, t in enumerate(reversed(fields)) if t not in _BITS),
                       len(fields))
            run = min(run, len(fields) - 1)
            if num_classes is None:
                if run == 0:
                    problems.report(list_path, _no_vector(fields, shown), lineno)
                    continue
                c = run
            else:
                c = num_classes
                if len(fields) < c + 1:  # too few labels, or no path at all
                    n = len(fields)
                    problems.report(
                        list_path, f"expected a path and {_count(c, 'label')}, found "
                        f"{_count(n, 'field')}: {shown!r} (C = {c}, set by {source})", lineno,
                    )
                    continue
            vec = fields[-c:]
            bad = [(j, t) for j, t in enumerate(vec) if t not in _BITS]
            if bad:
                j, t = bad[0]
                problems.report(
                    list_path, f"label entry {j} is {t!r}, entries must be 0 or 1", lineno
                )
                continue
            path = text[spans[0][0] : spans[-c - 1][1]]
            if num_classes is not None and run > c and not (data_root / path).is_file():
                # 'a.jpg 0 1 0' with C = 2: either a path 'a.jpg 0' or one label too many;
                # only an existing file makes it the former.
                problems.report(
                    list_path,
                    f"label vector has {run} entries, expected {num_classes} (set by {source}); "
                    f"or, if {path!r} is the image path, that image file is not found",
                    lineno,
                )
                continue
            if num_classes is None:
                num_classes, source = c, f"{list_path}:{lineno}"
            paths.append(str(data_root / path))
            rows.append(np.fromiter((t == "1" for t in vec), dtype=np.uint8, count=c))
            origins.append((str(list_path), lineno))
    labels = np.stack(rows) if rows else np.zeros((0, num_classes or 0), np.uint8)
    return paths, labels, origins, num_classes, source


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _no_vector(fields: list[str], shown: str) -> str:
    """Message for a line without a trailing 0/1 vector while C is still unknown."""
    found = f"expected a path and a 0/1 label vector, found {_count(len(fields), 'field')}: "
    if len(fields) == 1:
        return found + repr(shown)
    return found + f"{shown!r} (the last field {fields[-1]!r} is not a 0/1 label)"


def _read_checked(
    list_path: Path, data_root: Path, problems: ProblemLog, num_classes: int | None,
    source: str | None,
) -> tuple[list[str], np.ndarray, list[tuple[str, int]], int | None, str | None]:
    paths, labels, origins, c, source = read_list_file(
        list_path, data_root, problems, num_classes, source
    )
    keep = keep_readable(paths, problems, origins)
    return [paths[i] for i in keep], labels[keep], [origins[i] for i in keep], c, source


def load_list_splits(
    name: str, root: str | None, *, lists: str | None = None, protocol: str = "lists",
    seed: int = 0, image_size: int = 32, augment: bool = False, skip_bad: bool = False,
    num_classes: int | None = None, default_k: int = 0, counts: Mapping[str, int] | None = None,
    multi_label: bool | None = None, problems: ProblemLog | None = None,
    cache_dir: str | None = None,
) -> DatasetSplits:
    """Splits of a list-file dataset; see the module docstring for ``protocol``.

    Args:
        lists: folder of the list files (default ``root``).
        num_classes: C; ``None`` takes it from the first line of train.txt.
        default_k: the dataset's mAP@k cut-off.
        counts: overrides of the protocol's validation (and for ``imagenet100`` ``seed001``
            query) sizes.
        skip_bad: skip and count bad lines and unreadable images (``info["skipped"]``).
        cache_dir: folder of the decoded-image cache (``cache.py``); ``None``: decode on access.
    """
    if root is None:
        raise DatasetError(f"{name} needs root=\nExpected layout:\n{LAYOUT}")
    data_root = Path(root)
    list_dir = Path(lists) if lists is not None else data_root
    if not data_root.is_dir():
        raise missing(data_root, f"{name} data root folder", LAYOUT)
    problems = problems or ProblemLog.for_load(skip_bad)
    before = problems.count

    # split -> (paths, labels, (list file, line) per item)
    pools: dict[str, tuple[list[str], np.ndarray, list[tuple[str, int]]]] = {}
    c, source = num_classes, None
    for split, fname in LIST_FILES.items():
        paths, labels, where, c, source = _read_checked(list_dir / fname, data_root, problems,
                                                        c, source)
        pools[split] = (paths, labels, where)
    if (list_dir / VAL_FILE).is_file() and protocol == "lists":
        pools["validation"] = _read_checked(list_dir / VAL_FILE, data_root, problems, c,
                                            source)[:3]
    if c is None:
        raise DatasetError(f"{name}: no valid line in the list files under {list_dir}")

    # One pool of items; every split is an index array into it.
    order = [s for s in ("train", "validation", "query", "database") if s in pools]
    all_paths = [p for s in order for p in pools[s][0]]
    all_origins = [o for s in order for o in pools[s][2]]
    all_labels = np.concatenate([pools[s][1] for s in order])
    offsets = np.cumsum([0] + [len(pools[s][0]) for s in order])
    idx = {s: np.arange(offsets[i], offsets[i + 1]) for i, s in enumerate(order)}

    if protocol == "seed001-test":  # imagenet100: split test.txt into query + validation
        n = merge_counts({"query": 2500, "validation": 2500}, counts, name, "seed001")
        q, v = carve(idx["query"], n["validation"], seed, name, "test.txt")
        if len(q) < n["query"]:
            raise DatasetError(
                f"{name}: test.txt has {len(idx['query'])} usable lines, the protocol needs "
                f"{n['query'] + n['validation']} ({n['query']} query, {n['validation']} validation)"
            )
        # a seeded pick: test.txt is often sorted by class, so its first lines are not a sample
        pick = np.random.default_rng([seed, 5]).permutation(len(q))[: n["query"]]
        idx["query"], idx["validation"] = q[np.sort(pick)], v
    elif "validation" not in idx:
        n_train = len(idx["train"])
        # 10 % of train, at least 1 item while at least 1 is left for training.
        tenth = max(0, min(n_train - 1, max(1, round(0.1 * n_train))))
        default_val = 2100 if protocol == "seed001" else tenth
        n = merge_counts({"validation": default_val}, counts, name, protocol)
        idx["train"], idx["validation"] = carve(idx["train"], n["validation"], seed, name)
    idx["database"] = shuffled(idx["database"], seed)

    if multi_label is None:
        multi_label = bool((all_labels.sum(1) > 1).any())
    return from_files(
        all_paths, torch.from_numpy(all_labels.astype(np.float32)), idx, image_size=image_size,
        augment=augment, origins=all_origins, cache_dir=cache_dir, name=name, num_classes=c,
        multi_label=multi_label, default_k=default_k,
        info={"protocol": protocol.replace("-test", ""), "seed": seed, "source": str(list_dir),
              "skipped": problems.count - before},
    )


@DATASETS.register("list", help="any list-file dataset (train.txt / test.txt / database.txt)")
def load_list(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    lists: str | None = None, num_classes: int | None = None, k: int = 0, **kw: object,
) -> DatasetSplits:
    """A list-file dataset; C from ``num_classes`` or the first line; ``k`` its mAP cut-off."""
    if protocol not in (None, "lists"):
        raise DatasetError(f"dataset 'list' has one protocol, 'lists'; got {protocol!r}")
    return load_list_splits("list", root, lists=lists, seed=seed, image_size=image_size,
                            num_classes=num_classes, default_k=k, **kw)  # type: ignore[arg-type]


@DATASETS.register("nuswide21", help="NUS-WIDE, 21 concepts, list files; k = 5000; "
                   "protocols seed001 (default), lists")
def load_nuswide21(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    lists: str | None = None, **kw: object,
) -> DatasetSplits:
    """NUS-WIDE-21 (Chua et al., 2009) from the literature's list files (21 labels, k 5000)."""
    protocol = protocol or "seed001"
    if protocol not in ("seed001", "lists"):
        raise DatasetError(f"nuswide21 protocols: 'seed001', 'lists'; got {protocol!r}")
    return load_list_splits("nuswide21", root, lists=lists, protocol=protocol, seed=seed,
                            image_size=image_size, num_classes=21, default_k=5000,
                            multi_label=True, **kw)  # type: ignore[arg-type]


# Registered as "imagenet100" by imagenet.py, which dispatches between these list files and
# the ImageNet folder tree.
def load_imagenet100(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 224,
    lists: str | None = None, **kw: object,
) -> DatasetSplits:
    """ImageNet-100 (Cao et al., 2017's 100 classes) from list files (100 classes, k 1000)."""
    protocol = protocol or "seed001"
    if protocol not in ("seed001", "lists"):
        raise DatasetError(f"imagenet100 protocols: 'seed001', 'lists'; got {protocol!r}")
    return load_list_splits("imagenet100", root, lists=lists,
                            protocol="seed001-test" if protocol == "seed001" else "lists",
                            seed=seed, image_size=image_size, num_classes=100, default_k=1000,
                            multi_label=False, **kw)  # type: ignore[arg-type]
