"""Writers of tiny datasets in their real on-disk formats, for tests (no mocks).

Each writer creates files exactly as the real dataset ships them (CIFAR python pickles in
torchvision's layout, IDX files, an MS-COCO instances JSON with JPEGs, HashNet list files,
a class-folder tree) and returns the ground truth it wrote, so tests can compare a loader's
output with an independent record.

Array images (CIFAR, IDX) carry their pool id in pixel (0, 0): red = id // 256,
green = id % 256 (grayscale IDX: the id itself, < 256), so a test can trace any returned
image back to the item written. Pool order is "train items, then test items".
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# The 80 category ids of MS-COCO (sparse in 1..90) and their names, as in instances_*.json.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _rgb_pool(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    ids = np.arange(n)
    x[:, 0, 0, 0], x[:, 0, 0, 1], x[:, 0, 0, 2] = ids // 256, ids % 256, 0
    return x


def decode_id(image) -> int:
    """Pool id stored by the array writers in pixel (0, 0) of a ``(3, H, W)`` [0, 1] image."""
    r, g = (round(float(image[c, 0, 0]) * 255) for c in (0, 1))
    return r * 256 + g


def write_cifar10(
    root: str | Path, train_per_class: int = 12, test_per_class: int = 3, seed: int = 0,
    folder: str = "cifar-10-batches-py", protocol: int | str = 2, bytes_keys: bool = False,
    labels_as: str = "list",
) -> np.ndarray:
    """Write ``root/folder/data_batch_1..5, test_batch, batches.meta`` (torchvision's layout).

    Each class has ``train_per_class`` train images spread over the five batches and
    ``test_per_class`` test images, in a shuffled order. Returns the class ids ``(N,)`` in
    pool order (batches 1..5 then test_batch); image ``i`` carries id ``i`` in pixel (0, 0).
    ``protocol``, ``bytes_keys`` and ``labels_as`` choose the pickle encoding (see
    :func:`_pickle`); ``data`` is always a uint8 ndarray ``(n, 3072)``, as in the real files.
    """
    rng = np.random.default_rng(seed)
    d = Path(root) / folder
    d.mkdir(parents=True, exist_ok=True)
    y_train = rng.permutation(np.repeat(np.arange(10), train_per_class))
    y_test = rng.permutation(np.repeat(np.arange(10), test_per_class))
    targets = np.concatenate([y_train, y_test])
    x = _rgb_pool(len(targets), 32, rng)
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # CIFAR rows: R plane, G, B
    bounds = np.linspace(0, len(y_train), 6).round().astype(int)
    enc = {"protocol": protocol, "bytes_keys": bytes_keys, "labels_as": labels_as}
    for b in range(5):
        lo, hi = bounds[b], bounds[b + 1]
        _pickle(d / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5", "labels": y_train[lo:hi].tolist(),
            "data": flat[lo:hi], "filenames": [f"img_{i}.png" for i in range(lo, hi)],
        }, **enc)
    n = len(y_train)
    _pickle(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y_test.tolist(),
                               "data": flat[n:], "filenames": [f"t_{i}.png" for i in range(n)]},
            **enc)
    _pickle(d / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                                 "dog", "frog", "horse", "ship", "truck"],
                                 "num_cases_per_batch": 10000, "num_vis": 3072}, **enc)
    return targets


def write_cifar100(
    root: str | Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0
) -> np.ndarray:
    """Write ``root/cifar-100-python/train, test, meta``; returns fine labels in pool order."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    y_train = rng.permutation(np.repeat(np.arange(100), train_per_class))
    y_test = rng.permutation(np.repeat(np.arange(100), test_per_class))
    x = _rgb_pool(len(y_train) + len(y_test), 32, rng).transpose(0, 3, 1, 2).reshape(-1, 3072)
    for name, y, xs in (("train", y_train, x[: len(y_train)]), ("test", y_test, x[len(y_train):])):
        _pickle(d / name, {"filenames": [f"{name}_{i}.png" for i in range(len(y))],
                           "batch_label": name, "fine_labels": y.tolist(),
                           "coarse_labels": (y // 5).tolist(), "data": xs})
    _pickle(d / "meta", {"fine_label_names": [f"fine_{i}" for i in range(100)],
                         "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    return np.concatenate([y_train, y_test])


LABEL_KEYS = ("labels", "fine_labels", "coarse_labels")


def _pickle(
    path: Path, obj: dict, protocol: int | str = 2, bytes_keys: bool = False,
    labels_as: str = "list",
) -> None:
    """Pickle a CIFAR dict.

    Args:
        protocol: a pickle protocol 0-5 of this Python and numpy, or ``"py2"``: the bytes
            Python 2's ``cPickle.dump(d, f, 2)`` with numpy 1.x wrote for the real files
            (:func:`py2_pickle`).
        bytes_keys: dict keys as ``bytes`` (how Python 3 sees the originals read with
            ``encoding="bytes"``); ``"py2"`` always writes Python-2 byte strings.
        labels_as: label lists as ``"list"`` (Python ints, like the real files), ``"array"``
            (an int64 ndarray) or ``"numpy-ints"`` (a list of numpy int64 scalars).
    """
    out: dict = {}
    for k, v in obj.items():
        if k in LABEL_KEYS and labels_as == "array":
            v = np.asarray(v, dtype=np.int64)
        elif k in LABEL_KEYS and labels_as == "numpy-ints":
            v = list(np.asarray(v, dtype=np.int64))
        out[k.encode() if bytes_keys else k] = v
    if protocol == "py2":
        path.write_bytes(py2_pickle(out))
    else:
        with open(path, "wb") as f:
            pickle.dump(out, f, protocol=int(protocol))


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled opcode for opcode as Python 2's ``cPickle`` (protocol 2) with numpy 1.x
    wrote the CIFAR python files (minus the memo, which loading does not need).

    Handles dict, list, tuple, str / bytes (written as Python-2 byte strings, latin-1), int,
    None, bool and 1-byte or little-endian ndarrays (``numpy.core.multiarray._reconstruct``
    plus ``__setstate__``, the array buffer a byte string).
    """
    return b"\x80\x02" + _py2(obj) + b"."


def _py2_str(s: str | bytes) -> bytes:
    b = s.encode("latin-1") if isinstance(s, str) else s
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING
    return b"T" + len(b).to_bytes(4, "little") + b  # BINSTRING


def _py2(obj: object) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"  # NEWTRUE / NEWFALSE
    if isinstance(obj, (int, np.integer)):
        v = int(obj)
        if 0 <= v < 256:
            return b"K" + bytes([v])  # BININT1
        if 0 <= v < 65536:
            return b"M" + v.to_bytes(2, "little")  # BININT2
        return b"J" + v.to_bytes(4, "little", signed=True)  # BININT
    if isinstance(obj, (str, bytes)):
        return _py2_str(obj)
    if isinstance(obj, tuple):
        body = b"".join(_py2(x) for x in obj)
        if len(obj) == 0:
            return b")"
        if len(obj) <= 3:
            return body + bytes([0x84 + len(obj)])  # TUPLE1..3
        return b"(" + body + b"t"  # MARK ... TUPLE
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(x) for x in obj) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):
        order = "|" if obj.dtype.itemsize == 1 else "<"
        assert obj.dtype.byteorder in ("|", "=", "<"), "little-endian arrays only"
        dtype = (b"cnumpy\ndtype\n" + _py2((obj.dtype.str[1:], 0, 1)) + b"R"
                 + _py2((3, order, None, None, None, -1, -1, 0)) + b"b")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2((0,))
                + _py2("b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
                + b"(" + _py2(1) + _py2(tuple(obj.shape)) + dtype + _py2(False)
                + _py2_str(np.ascontiguousarray(obj).tobytes()) + b"tb")  # __setstate__
    raise TypeError(f"py2_pickle: unsupported {type(obj).__name__}")


def write_idx(
    root: str | Path, folder: str = "MNIST", train_per_class: int = 6, test_per_class: int = 2,
    gz: bool = False, seed: int = 0,
) -> np.ndarray:
    """Write ``root/folder/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    28 x 28 uint8 grayscale images; image ``i`` (< 256 items) has value ``i`` at pixel
    (0, 0). Returns the labels in pool order (train then test).
    """
    rng = np.random.default_rng(seed)
    d = Path(root) / folder / "raw"
    d.mkdir(parents=True, exist_ok=True)
    y_train = rng.permutation(np.repeat(np.arange(10), train_per_class)).astype(np.uint8)
    y_test = rng.permutation(np.repeat(np.arange(10), test_per_class)).astype(np.uint8)
    n = len(y_train) + len(y_test)
    assert n < 256, "ids are stored in one byte"
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n)
    files = {"train-images-idx3-ubyte": x[: len(y_train)], "train-labels-idx1-ubyte": y_train,
             "t10k-images-idx3-ubyte": x[len(y_train):], "t10k-labels-idx1-ubyte": y_test}
    for name, arr in files.items():
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
            int(s).to_bytes(4, "big") for s in arr.shape)
        raw = header + arr.tobytes()
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (d / name).write_bytes(raw)
    return np.concatenate([y_train, y_test]).astype(np.int64)


def _save_image(path: Path, rng: np.random.Generator, size: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)


def write_class_folders(
    root: str | Path, per_class: int = 12, n_classes: int = 10, size: int = 8,
    ext: str = ".png", split_tree: bool = False, test_per_class: int = 3, seed: int = 0,
) -> dict[str, int]:
    """Write ``root/class_<c>/<i>.png`` (or ``root/train|test/class_<c>/`` if ``split_tree``).

    Returns ``{image path: class id}``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    parts = [("train", per_class), ("test", test_per_class)] if split_tree else [("", per_class)]
    for sub, n in parts:
        for c in range(n_classes):
            for i in range(n):
                p = Path(root) / sub / f"class_{c:02d}" / f"{i:03d}{ext}"
                _save_image(p, rng, size)
                out[str(p)] = c
    return out


def write_list_dataset(
    root: str | Path, n_classes: int = 5, n_train: int = 12, n_test: int = 6,
    n_database: int = 30, multi_label: bool = True, ext: str = ".jpg", size: int = 12,
    lists: str | Path | None = None, n_val: int = 0, gray_every: int = 0, seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Write images under ``root/images/`` and HashNet list files in ``lists`` (default root).

    ``train.txt``, ``test.txt``, ``database.txt`` (and ``val.txt`` when ``n_val > 0``), one
    line ``images/<split>_<i><ext> 0 1 0 ...`` per image. With ``multi_label`` each image
    carries 1-3 labels, else exactly one. Every ``gray_every``-th image is saved grayscale.
    Returns ``{list name: {relative path: label vector}}`` (list name without ``.txt``).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    list_dir = Path(lists) if lists is not None else root
    list_dir.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict[str, np.ndarray]] = {}
    sizes = {"train": n_train, "test": n_test, "database": n_database, "val": n_val}
    count = 0
    for name, n in sizes.items():
        if n == 0:
            continue
        truth[name] = {}
        lines = []
        for i in range(n):
            vec = np.zeros(n_classes, np.uint8)
            k = int(rng.integers(1, 4)) if multi_label else 1
            vec[rng.choice(n_classes, size=min(k, n_classes), replace=False)] = 1
            rel = f"images/{name}_{i:03d}{ext}"
            gray = gray_every > 0 and count % gray_every == 0
            _save_image(root / rel, rng, size, "L" if gray else "RGB")
            count += 1
            truth[name][rel] = vec
            lines.append(rel + " " + " ".join(str(int(v)) for v in vec))
        (list_dir / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return truth


def write_named_list_dataset(
    root: str | Path, lists: dict[str, list[tuple[str, list[int]]]], size: int = 8,
    sep: str = " ",
) -> dict[str, tuple[int, int, int]]:
    """Write list files with the given image paths (spaces, brackets...) and the images.

    ``lists`` maps a list name (``"train"``, ``"test"``, ...) to ``(relative path, label
    vector)`` lines, written as ``<path><sep><labels joined by sep>``. Each image is a solid
    colour, unique per path, saved as PNG or JPEG by its extension (PNG when it has none, so a
    path like ``scans/page 1`` is a real image). Returns ``{relative path: (r, g, b)}``.
    """
    root = Path(root)
    colours: dict[str, tuple[int, int, int]] = {}
    for name, lines in lists.items():
        text = []
        for rel, vec in lines:
            if rel not in colours:
                k = len(colours) + 1
                colours[rel] = (40 * k % 256, 255 - 30 * k % 256, 70 * k % 256)
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
                Image.new("RGB", (size, size), colours[rel]).save(path, format=fmt)
            text.append(rel + sep + sep.join(str(v) for v in vec))
        (root / f"{name}.txt").write_text("\n".join(text) + "\n")
    return colours


def write_coco_dataset(
    root: str | Path, n_images: int = 40, n_unlabelled: int = 3,
    splits: tuple[str, ...] = ("train2017",), size: int = 16, seed: int = 0,
) -> dict[str, set[int]]:
    """Write ``root/annotations/instances_<split>.json`` and JPEGs in ``root/<split>/``.

    Per split: ``n_images`` images with 1-4 instance annotations each (real COCO category
    ids, all 80 categories listed) plus ``n_unlabelled`` images with none. Returns
    ``{image path: set of COCO category ids}`` for every image written (empty set: none).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    truth: dict[str, set[int]] = {}
    ann_id, img_id = 1, 1
    for split in splits:
        images, anns = [], []
        for i in range(n_images + n_unlabelled):
            file_name = f"{img_id:012d}.jpg"
            _save_image(root / split / file_name, rng, size)
            images.append({"id": img_id, "file_name": file_name, "width": size,
                           "height": size, "license": 1, "coco_url": "", "date_captured": ""})
            cats: set[int] = set()
            if i < n_images:
                for c in rng.choice(COCO_IDS, size=int(rng.integers(1, 5))):
                    cats.add(int(c))
                    anns.append({"id": ann_id, "image_id": img_id, "category_id": int(c),
                                 "bbox": [1.0, 1.0, 4.0, 4.0], "area": 16.0, "iscrowd": 0,
                                 "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]})
                    ann_id += 1
            truth[str(root / split / file_name)] = cats
            img_id += 1
        rng.shuffle(images)  # real files do not list images in id order
        data = {"info": {"description": "tiny COCO-format fixture"}, "licenses": [],
                "images": images, "annotations": anns,
                "categories": [{"id": c, "name": f"cat_{c}", "supercategory": "thing"}
                               for c in COCO_IDS]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return truth


def corrupt_image(path: str | Path) -> None:
    """Truncate an image file so that decoding it fails."""
    p = Path(path)
    p.write_bytes(p.read_bytes()[:40])
