"""MS-COCO (Lin et al., 2014) as a multi-label retrieval set, read through pycocotools.

Each image's label vector marks the categories of its instance annotations; the 80
category ids (sparse, 1..90) are mapped to contiguous indices in ascending id order.
Images with no annotation are dropped (SPEC §6). Protocol ``seed001`` (default, seed 001
uses the 2017 release): seeded random 10,000 train, 5,000 query, 5,000 validation, the rest
the database (overridable with ``counts={"train": .., "query": .., "validation": ..}``).
Protocol ``lists`` reads HashNet-style list files instead (see ``listfile.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .assemble import from_files
from .base import DatasetSplits
from .errors import DatasetError, ProblemLog, missing
from .images import keep_readable
from .listfile import load_list_splits
from .registry import DATASETS
from .splits import merge_counts, random_parts, shuffled

log = logging.getLogger(__name__)

SEED001_COUNTS = {"query": 5000, "validation": 5000, "train": 10000}
LAYOUT = """\
  ROOT/annotations/instances_train2017.json, instances_val2017.json  (one or more files)
  ROOT/train2017/<file_name>, ROOT/val2017/<file_name>  (images of instances_<X>.json in
      ROOT/<X>/ or ROOT/images/<X>/; option images=DIR for a single annotation file)
or list files (protocol 'lists'): see the 'list' dataset.
"""


def _open_coco(path: Path):  # -> pycocotools.coco.COCO
    from pycocotools.coco import COCO

    if not path.is_file():
        raise missing(path, "COCO annotation file", LAYOUT)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(path))
    except Exception as e:  # malformed JSON or missing keys: name the file
        raise DatasetError(f"cannot read COCO annotations {path}: {e!r}") from e


def _image_dir(root: Path, ann: Path, images: str | None) -> Path:
    if images is not None:
        return Path(images)
    split = ann.stem.removeprefix("instances_")
    for d in (root / split, root / "images" / split):
        if d.is_dir():
            return d
    raise missing(root / split, f"image folder for {ann.name}", LAYOUT)


def read_coco(
    root: Path, annotations: Sequence[Path], images: str | None = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths, multi-hot labels ``(N, C)`` uint8 and category names of labelled images.

    Images come in (annotation file, ascending image id) order.
    """
    paths: list[str] = []
    rows: list[np.ndarray] = []
    cat_ids: list[int] | None = None
    names: list[str] = []
    for ann in annotations:
        coco = _open_coco(ann)
        ids = sorted(coco.getCatIds())
        if cat_ids is None:
            cat_ids, names = ids, [c["name"] for c in coco.loadCats(ids)]
        elif ids != cat_ids:
            raise DatasetError(f"{ann}: categories differ from {annotations[0]}")
        column = {c: i for i, c in enumerate(cat_ids)}
        img_dir = _image_dir(root, ann, images)
        for img_id in sorted(coco.getImgIds()):
            cats = {a["category_id"] for a in coco.imgToAnns.get(img_id, [])}
            if not cats:
                continue  # SPEC §6: images without labels are dropped
            row = np.zeros(len(cat_ids), np.uint8)
            row[[column[c] for c in cats]] = 1
            rows.append(row)
            paths.append(str(img_dir / coco.imgs[img_id]["file_name"]))
    c = len(cat_ids or [])
    return paths, (np.stack(rows) if rows else np.zeros((0, c), np.uint8)), names


@DATASETS.register("coco", help="MS-COCO instances JSON (pycocotools) or list files; "
                   "80 labels, k = 5000; protocols seed001 (default), lists")
def load_coco(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    annotations: str | Sequence[str] | None = None, images: str | None = None,
    lists: str | None = None, augment: bool = False, skip_bad: bool = False,
    counts: Mapping[str, int] | None = None, problems: ProblemLog | None = None,
    cache_dir: str | None = None, **_: object,
) -> DatasetSplits:
    """MS-COCO split per ``protocol`` (``seed001`` from annotations, or ``lists``).

    Args:
        annotations: instances JSON file(s); default ``ROOT/annotations/instances_*.json``.
        images: image folder (single annotation file only); default ``ROOT/<split>``.
        lists: list-file folder, implies protocol ``lists``.
        counts: overrides of seed 001's train / query / validation sizes.
        skip_bad: skip and count missing or unreadable images (``info["skipped"]``).
        cache_dir: folder of the decoded-image cache (``cache.py``); ``None``: decode on access.
    """
    if root is None:
        raise DatasetError("coco needs root=\nExpected layout:\n" + LAYOUT)
    root_p = Path(root)
    if protocol is None:
        protocol = "lists" if lists is not None else "seed001"
    if protocol == "lists":
        return load_list_splits("coco", root, lists=lists, seed=seed, image_size=image_size,
                                augment=augment, skip_bad=skip_bad, num_classes=80,
                                default_k=5000, counts=counts, multi_label=True,
                                problems=problems, cache_dir=cache_dir)
    if protocol != "seed001":
        raise DatasetError(f"coco protocols: 'seed001', 'lists'; got {protocol!r}")
    if annotations is None:
        anns = sorted((root_p / "annotations").glob("instances_*.json"))
        if not anns:
            raise missing(root_p / "annotations" / "instances_*.json",
                          "COCO annotation file", LAYOUT)
    else:
        anns = [Path(a) for a in ([annotations] if isinstance(annotations, str) else annotations)]
    if images is not None and len(anns) > 1:
        raise DatasetError("images= applies to a single annotation file; got several")
    problems = problems or ProblemLog.for_load(skip_bad)
    paths, labels, names = read_coco(root_p, anns, images)
    before = problems.count
    keep = keep_readable(paths, problems)
    paths, labels = [paths[i] for i in keep], labels[keep]
    n = merge_counts(SEED001_COUNTS, counts, "coco", protocol)
    parts = random_parts(len(paths), n, seed, "coco")
    parts["database"] = shuffled(parts.pop("rest"), seed)
    return from_files(
        paths, torch.from_numpy(labels.astype(np.float32)), parts, image_size=image_size,
        augment=augment, cache_dir=cache_dir, name="coco", num_classes=labels.shape[1],
        multi_label=True,
        default_k=5000, class_names=names,
        info={"protocol": protocol, "seed": seed, "source": [str(a) for a in anns],
              "skipped": problems.count - before},
    )
