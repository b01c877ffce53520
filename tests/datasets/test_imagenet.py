"""ImageNet folder trees: ``imagenet`` (classification) and ``imagenet100`` (seed 001), plus
the imagenet100 dispatch between list files and the tree. Fixtures are tiny trees of real
JPEGs written by PIL; the ground truth is the synset folder each file was written to."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import corrupt_image, write_list_dataset
from PIL import Image

from retrieval_bio.datasets import DatasetError, check, load

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # sorted, as on disk


def write_imagenet_tree(
    root: Path, wnids=WNIDS, train_per_class: int = 6, val_per_class: int = 5, size: int = 20,
    seed: int = 0,
) -> dict[str, str]:
    """ROOT/train/<wnid>/<wnid>_<i>.JPEG and ROOT/val/<wnid>/ILSVRC2012_val_<n>.JPEG;
    returns ``{path: wnid}``."""
    rng = np.random.default_rng(seed)
    truth, n_val = {}, 0
    for wnid in wnids:
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if split == "train":
                    name = f"{wnid}_{i}.JPEG"
                else:
                    n_val += 1
                    name = f"ILSVRC2012_val_{n_val:08d}.JPEG"
                pixels = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / name, quality=90)
                truth[str(d / name)] = wnid
    return truth


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, write_imagenet_tree(root)


COUNTS = {"train": 4, "query": 2, "validation": 2}


def _one_hot(wnid: str, wnids: list[str]) -> torch.Tensor:
    v = torch.zeros(len(wnids))
    v[wnids.index(wnid)] = 1
    return v


def _split_of(path: str) -> str:
    return Path(path).parent.parent.name  # "train" or "val"


def test_imagenet100_tree_seed001_protocol(tree):
    root, truth = tree
    s = load("imagenet100", str(root), num_classes=3, counts=COUNTS, seed=3, image_size=16)
    chosen = WNIDS[:3]  # the first num_classes synsets in sorted order
    assert s.num_classes == 3 and s.class_names == chosen and not s.multi_label
    assert s.default_k == 1000 and s.info["protocol"] == "seed001"
    assert s.sizes() == {"train": 12, "validation": 6, "query": 6, "database": 18}
    for name in ("train", "validation", "query", "database"):
        split = s.split(name)
        assert torch.equal(split.labels, torch.stack([_one_hot(truth[p], chosen)
                                                      for p in split.paths]))
        per_class = Counter(truth[p] for p in split.paths)
        assert set(per_class) == set(chosen)  # the 4th synset is left out everywhere
        want = {"train": 4, "validation": 2, "query": 2, "database": 6}[name]
        assert set(per_class.values()) == {want}
    # train, database from the train images; query + validation from the val images
    assert {_split_of(p) for p in s.train.paths + s.database.paths} == {"train"}
    assert {_split_of(p) for p in s.query.paths + s.validation.paths} == {"val"}
    assert not set(s.query.paths) & set(s.validation.paths)
    # database = every train image of the chosen classes, train items included (HashNet)
    assert set(s.database.paths) == {p for p, w in truth.items()
                                     if w in chosen and _split_of(p) == "train"}
    assert set(s.train.paths) <= set(s.database.paths)
    assert s.database.paths != sorted(s.database.paths)  # shuffled once
    image, label, index = s.query[1]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and index == 1
    assert torch.equal(label, _one_hot(truth[s.query.paths[1]], chosen))


def test_imagenet100_tree_is_seeded(tree):
    root, _ = tree
    a, b, c = (load("imagenet100", str(root), num_classes=3, counts=COUNTS, seed=sd)
               for sd in (5, 5, 6))
    for name in ("train", "validation", "query", "database"):
        assert a.split(name).paths == b.split(name).paths
    assert (a.train.paths, a.query.paths) != (c.train.paths, c.query.paths)


def test_imagenet100_class_list_sets_classes_and_label_order(tree, tmp_path):
    root, truth = tree
    order = [WNIDS[3], WNIDS[0]]
    listing = tmp_path / "classes.txt"
    listing.write_text(f"# ImageNet-100 subset\n{order[0]} tench\n\n{order[1]}\n")
    for classes in (str(listing), order):
        s = load("imagenet100", str(root), classes=classes, counts=COUNTS)
        assert s.num_classes == 2 and s.class_names == order
        for p, lab in zip(s.database.paths, s.database.labels, strict=True):
            assert torch.equal(lab, _one_hot(truth[p], order))  # label c = c-th listed wnid
    with pytest.raises(DatasetError, match="listed twice"):
        load("imagenet100", str(root), classes=[WNIDS[0], WNIDS[0]], counts=COUNTS)


def test_imagenet100_dispatches_to_list_files(tmp_path):
    truth = write_list_dataset(tmp_path, n_classes=100, n_train=6, n_test=10, n_database=8,
                               multi_label=False)
    (tmp_path / "train").mkdir()  # a stray train folder must not win over train.txt
    s = load("imagenet100", str(tmp_path), counts={"query": 5, "validation": 5})
    assert s.sizes() == {"train": 6, "validation": 5, "query": 5, "database": 8}
    assert {str(Path(p).relative_to(tmp_path)) for p in s.database.paths} == set(
        truth["database"])


def test_imagenet100_errors_name_the_folder_and_layout(tree, tmp_path):
    root, _ = tree
    with pytest.raises(DatasetError, match=r"neither list files .*train\.txt.* nor a folder "
                                           r"tree(.|\n)*Expected layout(.|\n)*ROOT/val/<wnid>"):
        load("imagenet100", str(tmp_path))
    with pytest.raises(DatasetError, match="first 100 synsets .* found 4"):
        load("imagenet100", str(root))
    with pytest.raises(DatasetError, match=f"class '{WNIDS[0]}' has 6 train images, the "
                                           f"protocol needs 130 per class"):
        load("imagenet100", str(root), num_classes=2)
    # a synset without its val folder: the error names that folder
    bad = tmp_path / "bad"
    write_imagenet_tree(bad, wnids=WNIDS[:2], train_per_class=2, val_per_class=1, size=8)
    for f in (bad / "val" / WNIDS[1]).iterdir():
        f.unlink()
    (bad / "val" / WNIDS[1]).rmdir()
    with pytest.raises(DatasetError, match=rf"synset folder of class 1 \({WNIDS[1]}\) not "
                                           rf"found: .*val/{WNIDS[1]}(.|\n)*Expected layout"):
        load("imagenet100", str(bad), num_classes=2)
    with pytest.raises(DatasetError, match="protocol 'seed001'"):
        load("imagenet100", str(root), protocol="lists", num_classes=3)


def test_imagenet_classification_protocol(tmp_path):
    truth = write_imagenet_tree(tmp_path, wnids=WNIDS[:3], train_per_class=10,
                                val_per_class=4, size=12)
    s = load("imagenet", str(tmp_path), val_fraction=0.2, seed=1, image_size=8)
    assert s.num_classes == 3 and s.class_names == WNIDS[:3] and s.default_k == 0
    assert s.sizes() == {"train": 24, "validation": 6, "query": 12, "database": 30}
    for name in ("train", "validation", "query", "database"):
        split = s.split(name)
        assert torch.equal(split.labels, torch.stack([_one_hot(truth[p], WNIDS[:3])
                                                      for p in split.paths]))
    train_images = {p for p in truth if _split_of(p) == "train"}
    assert set(s.query.paths) == {p for p in truth if _split_of(p) == "val"}
    assert set(s.database.paths) == train_images
    assert not set(s.train.paths) & set(s.validation.paths)
    assert set(s.train.paths) | set(s.validation.paths) == train_images
    assert Counter(truth[p] for p in s.validation.paths) == dict.fromkeys(WNIDS[:3], 2)
    image, label, index = s.train[0]
    assert image.shape == (3, 8, 8) and label.sum() == 1 and index == 0


def test_imagenet_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"ImageNet folder not found: .*train(.|\n)*"
                                           r"ROOT/train/<wnid>/\*\.JPEG"):
        load("imagenet", str(tmp_path))
    write_imagenet_tree(tmp_path, wnids=WNIDS[:2], train_per_class=2, val_per_class=1, size=8)
    (tmp_path / "val" / WNIDS[3]).mkdir()
    with pytest.raises(DatasetError, match=rf"differ \(only in train: \[\], only in val: "
                                           rf"\['{WNIDS[3]}'\]\)"):
        load("imagenet", str(tmp_path))
    with pytest.raises(DatasetError, match="one protocol"):
        load("imagenet", str(tmp_path), protocol="seed001")


def test_corrupt_image_lazy_by_default_skipped_with_skip_bad(tmp_path):
    truth = write_imagenet_tree(tmp_path, wnids=WNIDS[:2], train_per_class=5,
                                val_per_class=2, size=12)
    bad = sorted(p for p in truth if _split_of(p) == "train")[0]
    corrupt_image(bad)
    s = load("imagenet", str(tmp_path), val_fraction=0.2)
    i = s.database.paths.index(bad)
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        s.database[i]
    skipped = load("imagenet", str(tmp_path), val_fraction=0.2, skip_bad=True)
    assert skipped.info["skipped"] == 1 and bad not in skipped.database.paths
    assert len(skipped.database) == len(s.database) - 1
    report = check("imagenet100", str(tmp_path), num_classes=2,
                   counts={"train": 3, "query": 1, "validation": 1})
    assert report.n_problems == 1 and report.problems[0].file == bad
    assert report.sizes == {"train": 6, "validation": 2, "query": 2, "database": 9}
