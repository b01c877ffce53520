"""List-file datasets (HashNet / DeepHash-pytorch format): list, nuswide21, imagenet100."""

import numpy as np
import pytest
import torch
from fixtures import corrupt_image, write_list_dataset, write_named_list_dataset

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
    with pytest.raises(DatasetError, match=r"train\.txt:1: expected a path and 21 labels, "
                                           r"found 6 fields: 'images/train_000\.jpg [01 ]+' "
                                           r"\(C = 21, set by num_classes=21\)"):
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
     (lambda s: s.split()[0], r"test\.txt:3: expected a path and 5 labels, found 1 field: "
                              r"'images/test_002\.jpg' \(C = 5, set by .*train\.txt:1\)"),
     (lambda s: s[s.index(" ") + 1:], r"test\.txt:3: expected a path and 5 labels, found 5 "
                                      r"fields: '[01] [01] [01] [01] [01]'"),
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


# Paths with spaces, runs of spaces, brackets and parentheses, and inner "0" / "1" parts.
ODD = {
    "train": [("my photos/cat [1].png", [1, 0, 0]), ("my photos/dog  (2).jpg", [0, 1, 0]),
              ("a [b]/c d e.jpeg", [0, 1, 1]), ("scan 1 0.png", [0, 0, 1]),
              ("plain.png", [1, 1, 0])],
    "test": [("q [x] y.png", [1, 0, 1]), ("my photos/cat [1].png", [1, 0, 0])],
    "database": [("my photos/dog  (2).jpg", [0, 1, 0]), ("db/[0] 1.jpg", [0, 0, 1]),
                 ("plain.png", [1, 1, 0])],
}


@pytest.mark.parametrize("sep", [" ", "\t"])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_paths_with_spaces_and_brackets(tmp_path, sep, num_classes):
    """Lines are parsed from the right: the last C fields are the labels, the rest the path."""
    colours = write_named_list_dataset(tmp_path, ODD, sep=sep)
    s = load("list", str(tmp_path), num_classes=num_classes, counts={"validation": 1})
    assert s.num_classes == 3 and s.sizes() == {"train": 4, "validation": 1, "query": 2,
                                                "database": 3}
    assert _rel(s.query, tmp_path) == [p for p, _ in ODD["test"]]  # test.txt order
    assert sorted(_rel(s.train, tmp_path) + _rel(s.validation, tmp_path)) == sorted(
        p for p, _ in ODD["train"])
    assert sorted(_rel(s.database, tmp_path)) == sorted(p for p, _ in ODD["database"])
    for split, source in ((s.train, "train"), (s.validation, "train"), (s.query, "test"),
                          (s.database, "database")):
        truth = dict(ODD[source])
        for i, rel in enumerate(_rel(split, tmp_path)):
            image, label, _ = split[i]
            assert label.tolist() == truth[rel]
            # the decoded image is the file written under that exact name (solid colour)
            got = (image.mean(dim=(1, 2)) * 255).tolist()
            assert all(abs(a - b) < 4 for a, b in zip(got, colours[rel], strict=True)), (rel, got)


def test_path_ending_in_a_label_like_part(tmp_path):
    """'scans/page 1' ends in a part that reads as a label. Once C is known (num_classes, or
    a first line) the path is kept when that file exists; on the first line without
    num_classes it is ambiguous (documented): C comes out one too large, and the first line
    with the real C labels fails, pointing back to that first line."""
    lists = {"train": [("plain.png", [1, 0, 0]), ("scans/page 1", [0, 1, 0]),
                       ("scans/page 1", [0, 0, 1])],
             "test": [("scans/page 1", [1, 0, 1])], "database": [("plain.png", [1, 0, 0])]}
    write_named_list_dataset(tmp_path, lists)
    s = load("list", str(tmp_path), protocol="lists")  # C = 3 from 'plain.png 1 0 0'
    assert _rel(s.query, tmp_path) == ["scans/page 1"]
    assert s.query.labels[0].tolist() == [1, 0, 1] and s.num_classes == 3
    assert s.query[0][0].shape == (3, 32, 32)  # the file 'scans/page 1' decodes

    lists["train"] = lists["train"][1:] + lists["train"][:1]  # the ambiguous line first
    write_named_list_dataset(tmp_path, lists)
    with pytest.raises(DatasetError, match=r"train\.txt:3: expected a path and 4 labels, "
                                           r"found 4 fields: 'plain\.png 1 0 0' \(C = 4, set "
                                           r"by .*train\.txt:1\)"):
        load("list", str(tmp_path))
    s = load("list", str(tmp_path), num_classes=3, counts={"validation": 1})
    assert "scans/page 1" in _rel(s.train, tmp_path) + _rel(s.validation, tmp_path)
    # a line with one label too many (no such file 'plain.png 1') is still named as such
    (tmp_path / "database.txt").write_text("plain.png 1 1 0 0\n")
    with pytest.raises(DatasetError, match=r"database\.txt:1: label vector has 4 entries, "
                                           r"expected 3 \(set by num_classes=3\); or, if "
                                           r"'plain\.png 1' is the image path"):
        load("list", str(tmp_path), num_classes=3)


@pytest.mark.parametrize(
    ("line", "kw", "message"),
    [("foo.jpg 1", {"num_classes": 21},
      r"train\.txt:1: expected a path and 21 labels, found 2 fields: 'foo\.jpg 1' "
      r"\(C = 21, set by num_classes=21\)"),
     ("0 1 1", {"num_classes": 3}, r"expected a path and 3 labels, found 3 fields: '0 1 1'"),
     ("  my photos/cat.png  ", {}, r"train\.txt:1: expected a path and a 0/1 label vector, "
                                   r"found 2 fields: 'my photos/cat\.png' \(the last field "
                                   r"'photos/cat\.png' is not a 0/1 label\)"),
     ("solo.png", {}, r"expected a path and a 0/1 label vector, found 1 field: 'solo\.png'"),
     ("a b.png 0 2", {}, r"train\.txt:1: expected a path and a 0/1 label vector, found 4 "
                         r"fields: 'a b\.png 0 2' \(the last field '2' is not a 0/1 label\)"),
     ("a b.png 0 2 1", {"num_classes": 3}, r"train\.txt:1: label entry 1 is '2'")],
)
def test_short_or_bad_line_says_what_it_found(tmp_path, line, kw, message):
    write_list_dataset(tmp_path, n_classes=kw.get("num_classes", 3), n_train=3, n_test=2,
                       n_database=2)
    train = tmp_path / "train.txt"
    train.write_text(line + "\n" + train.read_text())
    with pytest.raises(DatasetError, match=message):
        load("list", str(tmp_path), **kw)
    s = load("list", str(tmp_path), skip_bad=True, **kw)  # the other lines are fine
    assert s.info["skipped"] == 1 and len(s.train) + len(s.validation) == 3
