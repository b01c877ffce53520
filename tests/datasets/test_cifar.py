"""CIFAR-10 / CIFAR-100 from torchvision-layout pickles and class folders."""

import pickle

import numpy as np
import pytest
import torch
from fixtures import corrupt_image, decode_id, write_cifar10, write_cifar100, write_class_folders

from retrieval_bio.datasets import DatasetError, load

SMALL = {"query": 2, "validation": 2, "train": 5}  # per class; the fixture has 15 per class


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root, train_per_class=12, test_per_class=3)


def _ids(split) -> np.ndarray:
    return np.asarray(split.indices)


def _class_counts(split, targets) -> np.ndarray:
    return np.bincount(targets[_ids(split)], minlength=10)


@pytest.mark.parametrize(
    ("protocol", "counts", "db_rule"),
    [("cifar10", SMALL, "rest"), ("cifar10-1", {"query": 2, "validation": 1, "train": 4}, "all"),
     ("cifar10-2", {"query": 3, "validation": 2, "train": 10}, "train")],
)
def test_hash_protocol_sizes_and_disjointness(cifar, protocol, counts, db_rule):
    root, targets = cifar
    s = load("cifar10", str(root), protocol=protocol, counts=counts, seed=3)
    q, v, t, db = (set(_ids(s.split(n)).tolist()) for n in ("query", "validation", "train",
                                                              "database"))
    pool = set(range(len(targets)))
    for name, part in (("query", q), ("validation", v), ("train", t)):
        assert np.all(_class_counts(s.split(name), targets) == counts[name])
        assert len(part) == 10 * counts[name]
    assert not (q & v) and not (q & t) and not (v & t)
    if db_rule == "rest":
        assert db == pool - q - v - t
    elif db_rule == "all":
        assert db == pool - q  # cifar10-1: database = everything but the queries
    else:
        assert db == t | v  # cifar10-2: database = the literature's train set
    assert len(db) == len(s.database)  # no duplicates
    assert s.info["protocol"] == protocol and s.num_classes == 10


@pytest.mark.parametrize(("protocol", "k"), [("cifar10", 5000), ("cifar10-1", 0),
                                             ("cifar10-2", 0), ("classification", 0)])
def test_default_k_per_protocol(cifar, tmp_path, protocol, k):
    """mAP@5000 for seed 001's cifar10; the whole database (k = 0) for cifar10-1 / cifar10-2,
    as DeepHash-pytorch scores them (topK = -1), and for classification."""
    root, _ = cifar
    counts = None if protocol == "classification" else {"query": 2, "validation": 1, "train": 4}
    assert load("cifar10", str(root), protocol=protocol, counts=counts).default_k == k
    # the same from class folders (a train/test tree, which classification needs)
    write_class_folders(tmp_path, per_class=7, split_tree=True, test_per_class=1, size=4)
    assert load("cifar10", str(tmp_path), protocol=protocol, counts=counts).default_k == k


def test_items_trace_back_to_the_written_images_and_labels(cifar):
    root, targets = cifar
    s = load("cifar10", str(root), counts=SMALL)
    for split in (s.train, s.query, s.database):
        for i in (0, len(split) // 2, len(split) - 1):
            image, label, index = split[i]
            item = decode_id(image)
            assert index == i and item == split.indices[i]
            assert torch.equal(label, torch.eye(10)[targets[item]])
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            assert 0 <= image.min() and image.max() <= 1


def test_seeded_determinism(cifar):
    root, _ = cifar
    a, b = (load("cifar10", str(root), counts=SMALL, seed=5) for _ in range(2))
    c = load("cifar10", str(root), counts=SMALL, seed=6)
    for name in ("train", "validation", "query", "database"):
        assert np.array_equal(_ids(a.split(name)), _ids(b.split(name)))
    assert not np.array_equal(_ids(a.query), _ids(c.query))
    assert not np.array_equal(_ids(a.database), _ids(c.database))


def test_database_is_shuffled_not_grouped_by_class(cifar):
    root, targets = cifar
    s = load("cifar10", str(root), counts=SMALL)
    cls = targets[_ids(s.database)]
    # Grouped by class would give 60 - 10 = 50 equal neighbours; random order about 5.
    assert np.sum(cls[1:] == cls[:-1]) < 20
    assert not np.all(np.diff(_ids(s.database)) > 0)


def test_classification_protocol(cifar):
    root, targets = cifar
    s = load("cifar10", str(root), protocol="classification", val_fraction=0.25)
    n_train = 120
    assert set(_ids(s.query)) == set(range(n_train, 150))  # the official test set
    assert set(_ids(s.database)) == set(range(n_train))
    t, v = set(_ids(s.train)), set(_ids(s.validation))
    assert not (t & v) and t | v == set(range(n_train))
    assert np.all(_class_counts(s.validation, targets) == 3)  # round(0.25 * 12) per class
    assert s.default_k == 0


def test_protocol_too_large_names_class_and_counts(cifar):
    root, _ = cifar
    with pytest.raises(DatasetError, match=r"class 'airplane' has 15 items.*needs 700"):
        load("cifar10", str(root))  # seed 001: 100 + 100 + 500 per class
    with pytest.raises(DatasetError, match="unknown cifar10 protocol"):
        load("cifar10", str(root), protocol="cifar10-3")
    with pytest.raises(DatasetError, match="takes counts for"):
        load("cifar10", str(root), counts={"database": 3})


def test_missing_batch_names_file_and_layout(tmp_path):
    write_cifar10(tmp_path, train_per_class=5, test_per_class=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3(.|\n)*Expected layout"):
        load("cifar10", str(tmp_path), counts=SMALL)
    with pytest.raises(DatasetError, match="Expected layout"):
        load("cifar10", str(tmp_path / "nowhere"))


def test_batch_folder_itself_as_root_and_bytes_keys(tmp_path):
    targets = write_cifar10(tmp_path, train_per_class=9, test_per_class=0)
    # Pickles written with bytes keys (as Python 3 reads the originals with encoding="bytes").
    p = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    d = pickle.loads(p.read_bytes())
    p.write_bytes(pickle.dumps({k.encode(): v for k, v in d.items()}))
    s = load("cifar10", str(tmp_path / "cifar-10-batches-py"), counts=SMALL)
    assert sum(s.sizes().values()) == len(targets)


@pytest.mark.parametrize(
    ("protocol", "bytes_keys", "labels_as"),
    [("py2", False, "list"), (0, False, "list"), (2, False, "list"), (2, True, "list"),
     (2, False, "array"), (2, True, "numpy-ints"), (4, True, "array"), (5, False, "list"),
     (5, True, "array"), (5, False, "numpy-ints")],
)
def test_pickle_encodings_load_through_the_restricted_unpickler(
    tmp_path, protocol, bytes_keys, labels_as
):
    """The real files (Python 2, protocol 2, numpy.core names, byte strings) and what Python 3
    / numpy 2 write with any protocol load, with every image and label where it was written."""
    targets = write_cifar10(tmp_path, train_per_class=12, test_per_class=3, protocol=protocol,
                            bytes_keys=bytes_keys, labels_as=labels_as)
    s = load("cifar10", str(tmp_path), counts=SMALL)
    assert sum(s.sizes().values()) == len(targets) == 150
    assert s.class_names[:2] == ["airplane", "automobile"]
    for split in (s.train, s.validation, s.query, s.database):
        for i in range(len(split)):
            image, label, _ = split[i]
            item = decode_id(image)
            assert item == split.indices[i]
            assert torch.equal(label, torch.eye(10)[targets[item]])


def test_truncated_or_foreign_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path, train_per_class=5, test_per_class=1)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"cannot unpickle .*data_batch_2 \(truncated"):
        load("cifar10", str(tmp_path), counts=SMALL)
    batch.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"cannot unpickle .*data_batch_2"):
        load("cifar10", str(tmp_path), counts=SMALL)
    batch.write_bytes(pickle.dumps([1, 2, 3], protocol=2))  # a pickle, but not a CIFAR dict
    with pytest.raises(DatasetError, match=r"data_batch_2 is not a CIFAR pickle: it holds a "
                                           r"list, expected a dict"):
        load("cifar10", str(tmp_path), counts=SMALL)


def test_class_folder_source(tmp_path):
    truth = write_class_folders(tmp_path, per_class=9)
    s = load("cifar10", str(tmp_path), counts=SMALL, image_size=16)
    assert s.sizes() == {"train": 50, "validation": 20, "query": 20, "database": 0}
    for split in (s.train, s.query):
        for i in range(len(split)):
            assert split.labels[i].argmax().item() == truth[split.paths[i]]
    image = s.train[0][0]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1
    all_paths = [p for n in ("train", "validation", "query") for p in s.split(n).paths]
    assert len(set(all_paths)) == len(all_paths) == 90
    assert s.class_names == [f"class_{c:02d}" for c in range(10)]


def test_class_folder_train_test_tree_for_classification(tmp_path):
    truth = write_class_folders(tmp_path, per_class=10, split_tree=True, test_per_class=2)
    s = load("cifar10", str(tmp_path), protocol="classification")
    assert all("/test/" in p for p in s.query.paths) and len(s.query) == 20
    assert all("/train/" in p for p in s.database.paths) and len(s.database) == 100
    assert len(s.validation) == 10 and len(s.train) == 90
    assert all(s.query.labels[i].argmax().item() == truth[p] for i, p in enumerate(s.query.paths))


def test_class_folder_classification_without_tree_fails(tmp_path):
    write_class_folders(tmp_path, per_class=2)
    with pytest.raises(DatasetError, match="official train/test split"):
        load("cifar10", str(tmp_path), protocol="classification")


def test_corrupt_image_raises_naming_file_or_is_skipped(tmp_path):
    write_class_folders(tmp_path, per_class=9)
    bad = tmp_path / "class_03" / "004.png"
    corrupt_image(bad)
    strict = load("cifar10", str(tmp_path), counts=SMALL)  # lazy: fails when decoded
    split = next(strict.split(n) for n in ("train", "validation", "query")
                 if str(bad) in strict.split(n).paths)
    with pytest.raises(DatasetError, match=str(bad)):
        split[split.paths.index(str(bad))]
    with pytest.raises(DatasetError, match=r"class 'class_03' has 8 items"):
        load("cifar10", str(tmp_path), counts=SMALL, skip_bad=True)
    s = load("cifar10", str(tmp_path), counts={"query": 2, "validation": 1, "train": 5},
             skip_bad=True)
    assert s.info["skipped"] == 1
    assert str(bad) not in [p for n in ("train", "validation", "query", "database")
                            for p in s.split(n).paths]


def test_cifar100_fine_labels(tmp_path):
    targets = write_cifar100(tmp_path, train_per_class=3, test_per_class=1)
    s = load("cifar100", str(tmp_path), val_fraction=1 / 3)
    assert s.num_classes == 100 and s.sizes() == {"train": 200, "validation": 100,
                                                  "query": 100, "database": 300}
    for split in (s.train, s.query):
        image, label, _ = split[7]
        item = decode_id(image)
        assert item == split.indices[7] and label.argmax().item() == targets[item]
        assert label.sum() == 1
    assert s.class_names[5] == "fine_5"
    with pytest.raises(DatasetError, match=r"cifar-100-python(.|\n)*Expected layout"):
        load("cifar100", str(tmp_path / "empty"))
