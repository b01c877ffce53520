"""MS-COCO from instances JSON (through pycocotools) and from list files."""

import json

import numpy as np
import pytest
import torch
from fixtures import COCO_IDS, corrupt_image, write_coco_dataset, write_list_dataset

from retrieval_bio.datasets import DatasetError, load

COUNTS = {"query": 6, "validation": 5, "train": 10}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return root, write_coco_dataset(root, n_images=30, n_unlabelled=4,
                                    splits=("train2017", "val2017"))


def _multi_hot(cat_ids: set[int]) -> torch.Tensor:
    v = torch.zeros(80)
    v[[sorted(COCO_IDS).index(c) for c in cat_ids]] = 1  # contiguous, ascending category id
    return v


def test_labels_drop_unlabelled_and_split_sizes(coco):
    root, truth = coco
    s = load("coco", str(root), counts=COUNTS, seed=4)
    labelled = {p for p, cats in truth.items() if cats}
    assert len(labelled) == 60
    assert s.sizes() == {"train": 10, "validation": 5, "query": 6, "database": 39}
    seen = []
    for name in ("train", "validation", "query", "database"):
        split = s.split(name)
        seen += split.paths
        for i, p in enumerate(split.paths):
            assert torch.equal(split.labels[i], _multi_hot(truth[p]))
    assert len(seen) == len(set(seen)) and set(seen) == labelled  # disjoint, nothing lost
    assert s.num_classes == 80 and s.multi_label and s.default_k == 5000
    assert s.class_names[0] == f"cat_{COCO_IDS[0]}"
    image, label, index = s.query[2]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1 and index == 2
    assert any(s.train.labels.sum(1) > 1)  # multi-label data really is multi-label


def test_seeded_and_database_shuffled(coco):
    root, _ = coco
    a, b, c = (load("coco", str(root), counts=COUNTS, seed=sd) for sd in (1, 1, 2))
    for name in ("train", "validation", "query", "database"):
        assert a.split(name).paths == b.split(name).paths
    assert a.query.paths != c.query.paths
    assert a.database.paths != sorted(a.database.paths)


def test_single_annotation_file_and_image_dir(coco, tmp_path):
    root, truth = coco
    s = load("coco", str(root), annotations=str(root / "annotations" / "instances_val2017.json"),
             images=str(root / "val2017"), counts={"query": 3, "validation": 3, "train": 4})
    assert sum(s.sizes().values()) == 30
    assert all("/val2017/" in p for p in s.train.paths)


def test_default_counts_need_20000_images(coco):
    root, _ = coco
    with pytest.raises(DatasetError, match=r"60 usable items, the protocol needs 20000"):
        load("coco", str(root))


def test_missing_annotations_and_images(tmp_path):
    with pytest.raises(DatasetError, match=r"instances_\*\.json(.|\n)*Expected layout"):
        load("coco", str(tmp_path))
    truth = write_coco_dataset(tmp_path, n_images=12, n_unlabelled=0)
    gone = sorted(truth)[3]
    (tmp_path / "train2017" / gone.rsplit("/", 1)[-1]).unlink()
    corrupt_image(sorted(truth)[5])
    small = {"query": 2, "validation": 2, "train": 3}
    with pytest.raises(DatasetError, match=rf"{gone}: image file not found"):
        load("coco", str(tmp_path), counts=small)
    s = load("coco", str(tmp_path), counts=small, skip_bad=True)
    assert s.info["skipped"] == 2 and sum(s.sizes().values()) == 10
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read COCO annotations"):
        load("coco", str(tmp_path), counts=small)


def test_category_ids_mapped_by_sorted_id_not_file_order(tmp_path):
    truth = write_coco_dataset(tmp_path, n_images=8, n_unlabelled=0)
    ann = tmp_path / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["categories"].reverse()  # file order must not matter
    ann.write_text(json.dumps(data))
    s = load("coco", str(tmp_path), counts={"query": 2, "validation": 2, "train": 2})
    for i, p in enumerate(s.train.paths):
        assert torch.equal(s.train.labels[i], _multi_hot(truth[p]))


def test_coco_from_list_files(tmp_path):
    truth = write_list_dataset(tmp_path, n_classes=80, n_train=6, n_test=3, n_database=5)
    s = load("coco", str(tmp_path), lists=str(tmp_path))
    assert s.info["protocol"] == "lists" and s.num_classes == 80 and len(s.query) == 3
    rel = [p[len(str(tmp_path)) + 1 :] for p in s.query.paths]
    assert np.array_equal(s.query.labels.numpy(), np.stack([truth["test"][r] for r in rel]))
