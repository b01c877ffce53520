"""The decoded-image cache (``datasets.load(..., cache_dir=)``): items bit-identical to the
decoding splits, rebuilt when a list or image file changes, reused otherwise, atomic and
safe under concurrent opens. Fixtures are real JPEG / PNG files of varied sizes written by
PIL, read through the real loaders."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import corrupt_image, write_cifar10, write_coco_dataset
from PIL import Image
from torch.utils.data import DataLoader

from retrieval_bio.datasets import SPLIT_NAMES, CachedSplit, DatasetError, load
from retrieval_bio.datasets.images import ArraySplit, ImageFileSplit

LOGGER = "retrieval_bio.datasets.cache"
N_CLASSES = 4


def _write_image(path: Path, rng: np.random.Generator, gray: bool = False) -> None:
    """A smooth random picture of a random non-square size (upsampled and downsampled)."""
    w, h = (int(x) for x in rng.integers(30, 150, size=2))
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    im = im.convert("L") if gray else im
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=90)
    else:
        im.save(path)


def write_mixed_lists(root: Path, seed: int = 0) -> None:
    """ROOT/images/*.jpg|png (varied sizes, one grayscale) and train/test/database.txt;
    the database repeats two train images (as HashNet's imagenet lists do)."""
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "test": [], "database": []}
    for split, n in (("train", 10), ("test", 4), ("database", 8)):
        for i in range(n):
            rel = f"images/{split}_{i}{'.png' if i % 3 == 0 else '.jpg'}"
            _write_image(root / rel, rng, gray=(split == "test" and i == 1))
            vec = np.zeros(N_CLASSES, int)
            vec[rng.integers(0, N_CLASSES)] = 1
            lines[split].append(f"{rel} {' '.join(map(str, vec))}")
    lines["database"] += lines["train"][:2]
    for split, text in lines.items():
        (root / f"{split}.txt").write_text("\n".join(text) + "\n")


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache-lists")
    write_mixed_lists(root)
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of a fixture, for tests that edit files."""
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst


def assert_same(cached, decoded, splits=SPLIT_NAMES) -> None:
    """Every item of every split: image bit-identical, label and index equal."""
    for name in splits:
        a, b = cached.split(name), decoded.split(name)
        assert isinstance(a, CachedSplit) and a.in_memory
        assert len(a) == len(b) and a.paths == b.paths
        assert torch.equal(a.labels, b.labels)
        for i in range(len(a)):
            (xa, ya, ia), (xb, yb, ib) = a[i], b[i]
            assert xa.dtype == xb.dtype == torch.float32
            assert torch.equal(xa, xb), (name, i, b.paths[i])
            assert torch.equal(ya, yb) and ia == ib == i


def _manifest(cache_dir: Path) -> dict:
    (path,) = cache_dir.glob("*.json")
    return json.loads(path.read_text())


def _array(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("*.u8")
    return path


def _builds(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if ": building" in r.getMessage()]


# image_size 24: resize mode; 80 and 96: crop mode with r = 91 and 110, whose centre-crop
# offsets torchvision rounds half-to-even differently for the window and the whole image.
@pytest.mark.parametrize("size", [24, 80, 96])
def test_cached_items_equal_decoded_items(listed, tmp_path, size):
    decoded = load("list", str(listed), seed=1, image_size=size)
    assert isinstance(decoded.train, ImageFileSplit) and not decoded.train.in_memory
    cached = load("list", str(listed), seed=1, image_size=size, cache_dir=str(tmp_path))
    assert_same(cached, decoded)
    m = _manifest(tmp_path)
    side = size if size <= 64 else round(size * 256 / 224)
    assert (m["count"], m["side"], m["image_size"]) == (22, side, size)  # 24 files, 2 repeated
    assert _array(tmp_path).stat().st_size == 22 * side * side * 3


@pytest.mark.parametrize("size", [24, 96])
def test_augmented_train_split_reads_the_cache(listed, tmp_path, size):
    cached = load("list", str(listed), image_size=size, augment=True, cache_dir=str(tmp_path))
    decoded = load("list", str(listed), image_size=size, augment=True)
    torch.manual_seed(0)
    for i in range(len(cached.train)):
        x, _, _ = cached.train[i]
        assert x.shape == (3, size, size) and 0 <= x.min() and x.max() <= 1
    assert_same(cached, decoded, splits=("validation", "query", "database"))
    # one cache serves augmented and plain loads (the pipeline loads both)
    assert len(list(tmp_path.glob("*.u8"))) == 1


def test_second_open_reuses_the_cache(listed, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    load("list", str(listed), image_size=24, cache_dir=str(tmp_path))
    assert len(_builds(caplog)) == 1
    before = _array(tmp_path).stat()
    caplog.clear()
    again = load("list", str(listed), seed=5, image_size=24, cache_dir=str(tmp_path))
    after = _array(tmp_path).stat()
    assert not _builds(caplog)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert_same(again, load("list", str(listed), seed=5, image_size=24))


def test_other_sizes_share_the_folder(listed, tmp_path):
    load("list", str(listed), image_size=24, cache_dir=str(tmp_path))
    load("list", str(listed), image_size=16, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("*.u8"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2


def test_changed_list_file_rebuilds(listed, tmp_path, caplog):
    root = _copy(listed, tmp_path)
    cache = tmp_path / "cache"
    load("list", str(root), image_size=24, cache_dir=str(cache))
    old = _manifest(cache)
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines[:-1][::-1]) + "\n")  # drop one, reorder
    caplog.set_level(logging.INFO, logger=LOGGER)
    cached = load("list", str(root), image_size=24, cache_dir=str(cache))
    new = _manifest(cache)
    assert new["paths_sha256"] != old["paths_sha256"] and new["count"] == old["count"] - 1
    (msg,) = _builds(caplog)
    assert "image list changed" in msg
    assert_same(cached, load("list", str(root), image_size=24))
    assert len(list(cache.glob("*.u8"))) == 1  # rebuilt in place, no orphan


def test_changed_image_file_rebuilds(listed, tmp_path, caplog):
    root = _copy(listed, tmp_path)
    cache = tmp_path / "cache"
    load("list", str(root), image_size=24, cache_dir=str(cache))
    old = _manifest(cache)
    caplog.set_level(logging.INFO, logger=LOGGER)
    image = root / "images" / "test_2.jpg"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    load("list", str(root), image_size=24, cache_dir=str(cache))
    assert "an image file changed" in _builds(caplog)[0]
    assert _manifest(cache)["files_sha256"] != old["files_sha256"]
    # a new picture under the same name: the cache serves the new one
    _write_image(image, np.random.default_rng(99))
    cached = load("list", str(root), image_size=24, cache_dir=str(cache))
    assert len(_builds(caplog)) == 2
    assert_same(cached, load("list", str(root), image_size=24))


def test_corrupt_image_fails_naming_it_and_leaves_no_cache(listed, tmp_path):
    root = _copy(listed, tmp_path)
    cache = tmp_path / "cache"
    corrupt_image(root / "images" / "train_4.jpg")
    with pytest.raises(DatasetError, match=r"train_4\.jpg.*listed at .*train\.txt:5"):
        load("list", str(root), image_size=24, cache_dir=str(cache))
    leftovers = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_unwritable_cache_folder_is_a_clean_error(listed, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match=r"a-file/cache is not writable.*cache_dir="):
        load("list", str(listed), image_size=24, cache_dir=str(blocker / "cache"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_cache_folder_is_a_clean_error(listed, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(DatasetError, match="not writable"):
            load("list", str(listed), image_size=24, cache_dir=str(folder))
    finally:
        folder.chmod(0o700)


def test_pickled_split_reopens_its_memory_map(listed, tmp_path):
    cached = load("list", str(listed), image_size=24, cache_dir=str(tmp_path))
    split = cached.database
    split[0]  # open the map in this process first: a pickled copy must not carry it
    copy = pickle.loads(pickle.dumps(split))
    assert copy.cache._array is None
    assert torch.equal(copy[3][0], split[3][0])
    # the pickled copy (no map) in two worker processes: each opens the file itself
    loader = DataLoader(copy, batch_size=5, num_workers=2)
    images = torch.cat([x for x, _, _ in loader])
    assert torch.equal(images, torch.stack([split[i][0] for i in range(len(split))]))


def test_concurrent_opens_build_once(listed, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    results, errors = [], []

    def open_it() -> None:
        try:
            results.append(load("list", str(listed), image_size=24, cache_dir=str(tmp_path)))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert len(_builds(caplog)) == 1
    assert_same(results[0], load("list", str(listed), image_size=24), splits=("query",))


def test_imagenet_tree_and_coco_read_the_cache(tmp_path):
    rng = np.random.default_rng(3)
    tree = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            for i in range(4):
                _write_image(tree / split / wnid / f"{wnid}_{i}.JPEG", rng)
    opts = {"num_classes": 2, "counts": {"train": 2, "query": 2, "validation": 2},
            "image_size": 72}
    assert_same(load("imagenet100", str(tree), cache_dir=str(tmp_path / "c1"), **opts),
                load("imagenet100", str(tree), **opts))
    coco = tmp_path / "coco"
    write_coco_dataset(coco, n_images=12, size=20)
    opts = {"counts": {"train": 4, "query": 2, "validation": 2}, "image_size": 16}
    assert_same(load("coco", str(coco), cache_dir=str(tmp_path / "c2"), **opts),
                load("coco", str(coco), **opts))


def test_in_memory_datasets_ignore_the_cache(tmp_path):
    cache = tmp_path / "cache"
    digits = load("digits", cache_dir=str(cache))
    assert digits.train.in_memory and not cache.exists()
    write_cifar10(tmp_path / "cifar", train_per_class=3, test_per_class=1)
    cifar = load("cifar10", str(tmp_path / "cifar"), protocol="classification",
                 cache_dir=str(cache))
    assert isinstance(cifar.train, ArraySplit) and cifar.train.in_memory and not cache.exists()


def test_a_run_with_data_cache_trains_from_the_cache(listed, tmp_path):
    """``--data-cache DIR`` reaches the loader: the run builds the cache, its splits read it,
    and a second run with the same images reuses it without a rebuild."""
    from typer.testing import CliRunner

    from retrieval_bio.cli import app
    from retrieval_bio.config import RunConfig
    from retrieval_bio.train.pipeline import load_splits

    cache = tmp_path / "cache"
    flags = ["--dataset", "list", "--root", str(listed), "--backbone", "mlp", "--image-size",
             "24", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--data-cache",
             str(cache)]
    result = CliRunner().invoke(app, ["finetune", *flags, "--out", str(tmp_path / "r1")])
    assert result.exit_code == 0, result.output
    built = _array(cache).stat()
    cfg = RunConfig.load_run(tmp_path / "r1" / "config.yaml")
    assert cfg.data_cache == str(cache)
    assert isinstance(load_splits(cfg).train, CachedSplit)
    result = CliRunner().invoke(app, ["finetune", *flags, "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    assert (_array(cache).stat().st_ino, _array(cache).stat().st_mtime_ns) == (
        built.st_ino, built.st_mtime_ns)
