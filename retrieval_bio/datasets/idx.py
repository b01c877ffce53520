"""MNIST and Fashion-MNIST from torchvision's raw IDX files (LeCun et al., 1998; Xiao et al., 2017).

Protocol ``classification`` as for CIFAR: train = the 60,000 training images less a seeded,
class-stratified validation carve-out (``val_fraction``), validation = the carve-out,
query = the 10,000 test images, database = the training images. The 28 x 28 grayscale
images are copied to 3 channels.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .assemble import from_arrays
from .base import DatasetSplits, one_hot
from .cifar import classification_parts
from .errors import DatasetError, missing
from .registry import DATASETS

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


def layout(folder: str) -> str:
    return (
        f"  ROOT/{folder}/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,\n"
        f"  ROOT/{folder}/raw/t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte\n"
        f"  (torchvision's layout; each file may also be gzipped, '<name>.gz'; ROOT may also be\n"
        f"   the raw folder itself)\n"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped) of unsigned bytes into an ndarray of its shape.

    The format (LeCun's MNIST page): 2 zero bytes, a type byte (0x08 = uint8), the number of
    dimensions, then each dimension as a big-endian uint32, then the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DatasetError(f"{path}: IDX type 0x{raw[2]:02x} unsupported, expected 0x08 (uint8)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says shape {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _locate(root: Path, folder: str, stem: str) -> Path:
    for d in (root / folder / "raw", root / "raw", root):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    raise missing(root / folder / "raw" / stem, "IDX file", layout(folder))


def _load_idx(
    name: str, folder: str, root: str | None, protocol: str | None, seed: int, image_size: int,
    augment: bool, val_fraction: float, class_names: list[str],
) -> DatasetSplits:
    if protocol not in (None, "classification"):
        raise DatasetError(f"{name} has one protocol, 'classification'; got {protocol!r}")
    if root is None:
        raise DatasetError(f"{name} needs root=\nExpected layout:\n{layout(folder)}")
    arrays = {k: read_idx(_locate(Path(root), folder, v)) for k, v in FILES.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(
                f"{name} {part}: images must be (N, H, W) and labels (N,), got {x.shape}, {y.shape}"
            )
    targets = np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64)
    if targets.max() >= 10:
        raise DatasetError(f"{name}: labels must lie in [0, 10), found {targets.max()}")
    images = np.concatenate([arrays["train_images"], arrays["test_images"]])
    parts = classification_parts(targets, len(arrays["train_labels"]), val_fraction, seed)
    return from_arrays(
        images, one_hot(targets, 10), parts, image_size=image_size, augment=augment, name=name,
        num_classes=10, multi_label=False, default_k=0, class_names=class_names,
        info={"protocol": "classification", "seed": seed, "source": str(root), "skipped": 0},
    )


@DATASETS.register("mnist", help="MNIST from torchvision's raw IDX files; classification")
def load_mnist(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    augment: bool = False, val_fraction: float = 0.1, **_: object,
) -> DatasetSplits:
    """MNIST (``ROOT/MNIST/raw/*-ubyte[.gz]``), grayscale copied to 3 channels."""
    return _load_idx("mnist", "MNIST", root, protocol, seed, image_size, augment, val_fraction,
                     [str(i) for i in range(10)])


@DATASETS.register("fashion-mnist", help="Fashion-MNIST from torchvision's raw IDX files")
def load_fashion_mnist(
    root: str | None, *, protocol: str | None = None, seed: int = 0, image_size: int = 32,
    augment: bool = False, val_fraction: float = 0.1, **_: object,
) -> DatasetSplits:
    """Fashion-MNIST (``ROOT/FashionMNIST/raw/*-ubyte[.gz]``), grayscale copied to 3 channels."""
    return _load_idx("fashion-mnist", "FashionMNIST", root, protocol, seed, image_size, augment,
                     val_fraction, FASHION_NAMES)
