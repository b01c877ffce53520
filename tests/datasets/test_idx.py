"""MNIST / Fashion-MNIST from torchvision's raw IDX files (plain and gzipped)."""

import numpy as np
import pytest
import torch
from fixtures import write_idx

from retrieval_bio.datasets import DatasetError, load
from retrieval_bio.datasets.idx import read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_idx_classification_splits(tmp_path, gz, name, folder):
    targets = write_idx(tmp_path, folder=folder, train_per_class=10, test_per_class=2, gz=gz)
    s = load(name, str(tmp_path), image_size=28, val_fraction=0.2)
    assert s.sizes() == {"train": 80, "validation": 20, "query": 20, "database": 100}
    assert set(s.query.indices) == set(range(100, 120))
    assert not set(s.train.indices) & set(s.validation.indices)
    for split in (s.train, s.query):
        image, label, index = split[3]
        item = round(float(image[0, 0, 0]) * 255)  # the writer put the item id at (0, 0)
        assert item == split.indices[3] and label.argmax().item() == targets[item]
        assert image.shape == (3, 28, 28) and torch.equal(image[0], image[1])  # gray -> RGB
        assert torch.equal(image[1], image[2]) and 0 <= image.min() and image.max() <= 1


def test_read_idx_matches_written_bytes_and_gz(tmp_path):
    write_idx(tmp_path / "a", gz=False)
    write_idx(tmp_path / "b", gz=True)
    raw = read_idx(tmp_path / "a" / "MNIST" / "raw" / "train-images-idx3-ubyte")
    gz = read_idx(tmp_path / "b" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    assert raw.shape == (60, 28, 28) and np.array_equal(raw, gz)
    # Independent parse of the header per LeCun's format description.
    data = (tmp_path / "a" / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes()
    assert data[:4] == b"\x00\x00\x08\x01" and int.from_bytes(data[4:8], "big") == 60
    assert np.array_equal(read_idx(tmp_path / "a" / "MNIST" / "raw" / "train-labels-idx1-ubyte"),
                          np.frombuffer(data[8:], np.uint8))


def test_missing_and_bad_idx_files(tmp_path):
    write_idx(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte(.|\n)*Expected layout"):
        load("mnist", str(tmp_path))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34\x08\x01junk")
    with pytest.raises(DatasetError, match="not an IDX file"):
        load("mnist", str(tmp_path))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (99).to_bytes(4, "big"))
    with pytest.raises(DatasetError, match="header says shape"):
        load("mnist", str(tmp_path))
