"""Image-folder trees: ``root/<class>/<image>`` (torchvision ``ImageFolder`` layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def scan_class_folders(folder: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths, class ids and sorted class names of a ``folder/<class>/<image>`` tree.

    Files are listed in sorted order, so the pool (and thus every seeded split) does not
    depend on the file system's listing order.
    """
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in {folder}")
    paths, targets = [], []
    for c, name in enumerate(classes):
        files = sorted(
            p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DatasetError(f"class folder {folder / name} holds no {IMAGE_SUFFIXES} files")
        paths += [str(p) for p in files]
        targets += [c] * len(files)
    return paths, np.asarray(targets, dtype=np.int64), classes
