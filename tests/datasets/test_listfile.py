"""List-file datasets (HashNet / DeepHash-pytorch format): list, nuswide21, imagenet100."""

import numpy as np
import pytest
import torch
from fixtures import corrupt_image, write_list_dataset

from retrieval_bio.datasets import DatasetError, check, load


def _rel(split, root) -> list[str]:
    return [str(p)[len(str(root)) + 1 :] for p in split.paths]


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    root = tmp_path_factory.mktemp("lists")
    return root, write_list_dataset(root, n_classes=5, n_train=20, n_test=6, n_database=30,
                                    gray_every=7)


def test_list_splits_labels_and_images(listed):
    root, truth = listed
    s = load("list", str(root), seed=1, counts={"validation": 4})
    assert s.sizes() == {"train": 16, "validation": 4, "query": 6, "database": 30}
    assert s.num_classes == 5 and s.multi_label
    assert _rel(s.query, root) == list(truth["test"])  # query order = test.txt order
    for name, source in (("train", "train"), ("validation", "train"), ("query", "test"),
                         ("database", "database")):
        split = s.split(name)
        for i, rel in enumerate(_rel(split, root)):
            assert torch.equal(split.labels[i], torch.from_numpy(truth[source][rel]).float())
    t, v = set(_rel(s.train, root)), set(_rel(s.validation, root))
    assert not t & v and t | v == set(truth["train"])
    assert set(_rel(s.database, root)) == set(truth["database"])
    image, label, index = s.database[0]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1 and index == 0


def test_grayscale_images_become_three_equal_channels(listed):
    root, _ = listed
    s = load("list", str(root), protocol="lists")
    i = _rel(s.database, root).index("images/database_002.jpg")  # written as mode "L"
    image = s.database[i][0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_database_shuffled_once_and_seeded(listed):
    root, truth = listed
    a, b = (load("list", str(root), seed=2) for _ in range(2))
    c = load("list", str(root), seed=3)
    assert _rel(a.database, root) == _rel(b.database, root)
    assert _rel(a.validation, root) == _rel(b.validation, root)
    assert _rel(a.database, root) != list(truth["database"])  # not the file's order
    assert _rel(a.database, root) != _rel(c.database, root)
    assert set(_rel(a.validation, root)) != set(_rel(c.validation, root))


def test_val_txt_is_used_when_present(tmp_path):
    truth = write_list_dataset(tmp_path, n_train=8, n_test=3, n_database=5, n_val=4,
                               multi_label=False, lists=tmp_path / "splits")
    s = load("list", str(tmp_path), lists=str(tmp_path / "splits"))
    assert _rel(s.validation, tmp_path) == list(truth["val"])
    assert len(s.train) == 8 and not s.multi_label


def test_nuswide21_seed001_carves_validation_from_train(tmp_path):
    truth = write_list_dataset(tmp_path, n_classes=21, n_train=15, n_test=4, n_database=10)
    s = load("nuswide21", str(tmp_path), counts={"validation": 5})
    assert s.sizes() == {"train": 10, "validation": 5, "query": 4, "database": 10}
    assert s.default_k == 5000 and s.num_classes == 21 and s.info["protocol"] == "seed001"
    assert set(_rel(s.train, tmp_path)) | set(_rel(s.validation, tmp_path)) == set(truth["train"])
    with pytest.raises(DatasetError, match="cannot carve 2100 validation items from 15"):
        load("nuswide21", str(tmp_path))


def test_imagenet100_seed001_splits_test_into_query_and_validation(tmp_path):
    truth = write_list_dataset(tmp_path, n_classes=100, n_train=6, n_test=10, n_database=8,
                               multi_label=False)
    s = load("imagenet100", str(tmp_path), counts={"query": 5, "validation": 5})
    assert s.sizes() == {"train": 6, "validation": 5, "query": 5, "database": 8}
    q, v = set(_rel(s.query, tmp_path)), set(_rel(s.validation, tmp_path))
    assert not q & v and q | v == set(truth["test"])
    assert s.default_k == 1000 and s.num_classes == 100
    lists = load("imagenet100", str(tmp_path), protocol="lists")
    assert len(lists.query) == 10


def test_wrong_class_count_for_named_dataset(tmp_path):
    write_list_dataset(tmp_path, n_classes=5, n_train=3, n_test=2, n_database=2)
    with pytest.raises(DatasetError, match=r"train\.txt:1: label vector has 5 entries, "
                                           r"expected 21 \(set by num_classes=21\)"):
        load("nuswide21", str(tmp_path))


def _edit_line(path, lineno, fn):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [(lambda s: s + " 0", r"test\.txt:3: label vector has 6 entries, expected 5 \(set by "
                          r".*train\.txt:1\)"),
     (lambda s: s[:-1] + "2", r"test\.txt:3: label entry 4 is '2'"),
     (lambda s: s.split()[0], r"test\.txt:3: no label vector"),
     (lambda s: "images/nope.jpg" + s[s.index(" "):],
      r"test\.txt:3: image file not found .*images/nope\.jpg")],
)
def test_bad_line_names_file_and_line(tmp_path, edit, message):
    write_list_dataset(tmp_path, n_train=5, n_test=4, n_database=4)
    _edit_line(tmp_path / "test.txt", 3, edit)
    with pytest.raises(DatasetError, match=message):
        load("list", str(tmp_path))
    s = load("list", str(tmp_path), skip_bad=True)
    assert len(s.query) == 3 and s.info["skipped"] == 1


def test_missing_list_file_and_root(tmp_path):
    write_list_dataset(tmp_path, n_train=4, n_test=2, n_database=3)
    (tmp_path / "database.txt").unlink()
    with pytest.raises(DatasetError, match=r"list file not found: .*database\.txt(.|\n)*"
                                           r"Expected layout"):
        load("list", str(tmp_path))
    with pytest.raises(DatasetError, match="Expected layout"):
        load("list", str(tmp_path / "absent"))


def test_corrupt_image_strict_lazy_and_skip_bad(tmp_path):
    write_list_dataset(tmp_path, n_train=6, n_test=3, n_database=5)
    bad = tmp_path / "images" / "database_001.jpg"
    corrupt_image(bad)
    s = load("list", str(tmp_path))
    i = s.database.paths.index(str(bad))
    with pytest.raises(DatasetError, match=r"cannot read image .*database_001\.jpg"):
        s.database[i]
    s = load("list", str(tmp_path), skip_bad=True)
    assert len(s.database) == 4 and s.info["skipped"] == 1 and str(bad) not in s.database.paths


def test_check_reports_every_problem_with_file_and_line(tmp_path):
    write_list_dataset(tmp_path, n_train=6, n_test=4, n_database=5)
    corrupt_image(tmp_path / "images" / "train_002.jpg")
    (tmp_path / "images" / "database_004.jpg").unlink()
    _edit_line(tmp_path / "test.txt", 2, lambda s: s + " 1")
    report = check("list", str(tmp_path))
    assert not report.ok and report.usable(skip_bad=True) and not report.usable()
    found = {(p.file.rsplit("/", 1)[-1], p.line) for p in report.problems}
    assert found == {("train.txt", 3), ("database.txt", 5), ("test.txt", 2)}
    assert report.n_problems == 3
    assert report.sizes == {"train": 4, "validation": 1, "query": 3, "database": 4}
    assert any("corrupt image" in p.message and "train_002.jpg" in p.message
               for p in report.problems)
    clean = tmp_path / "clean"
    write_list_dataset(clean, n_train=6, n_test=4, n_database=5)
    assert check("list", str(clean)).ok


def test_list_labels_are_parsed_not_positional(tmp_path):
    """An independent parse of the written list files gives the loaded label matrix."""
    write_list_dataset(tmp_path, n_classes=7, n_train=5, n_test=5, n_database=5)
    s = load("list", str(tmp_path), protocol="lists")
    rows = {ln.split()[0]: [int(t) for t in ln.split()[1:]]
            for ln in (tmp_path / "database.txt").read_text().splitlines()}
    got = {rel: s.database.labels[i].int().tolist() for i, rel in enumerate(_rel(s.database,
                                                                                    tmp_path))}
    assert got == rows and np.array(list(rows.values())).shape == (5, 7)


def test_imagenet100_query_is_a_sample_of_test_not_its_head(tmp_path):
    """HashNet's test.txt is sorted by class: taking its first lines would give the query
    set a few classes only."""
    write_list_dataset(tmp_path, n_classes=100, n_train=6, n_test=40, n_database=8,
                       multi_label=False)
    test_txt = tmp_path / "test.txt"
    lines = sorted(test_txt.read_text().splitlines(), key=lambda s: s.split()[1:][::-1])
    test_txt.write_text("\n".join(lines) + "\n")
    s = load("imagenet100", str(tmp_path), counts={"query": 10, "validation": 10})
    q, v = _rel(s.query, tmp_path), set(_rel(s.validation, tmp_path))
    kept = [ln.split()[0] for ln in lines if ln.split()[0] not in v]
    assert len(q) == 10 and set(q) <= set(kept)
    assert set(q) != set(kept[:10])
