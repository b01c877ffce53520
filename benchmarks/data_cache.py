"""One training epoch over a folder of JPEGs with and without the decoded-image cache.

Issue 15 ("Fast data"): writes a few thousand real-format JPEGs of photo-like size (random
sizes of 300-500 px, smooth random content with some grain, quality 90, so the files weigh
what photos of that size weigh) and HashNet list files, then times one epoch over the train
split of the ``list`` dataset (DataLoader, batch 64, shuffled, augmentation on, as in
training) decoding every JPEG, and again reading ``datasets.load(..., cache_dir=)``'s uint8
memory map. The one-time cache build is timed separately and excluded from the epoch.
Settings: 224 px (crop mode: resize to 256, random crop 224) and 32 px (resize mode); the
main process runs torch on one thread unless ``--threads``, as DataLoader workers do.

    python benchmarks/data_cache.py                  # 3000 images, 224 and 32 px, 0 workers
    python benchmarks/data_cache.py --quick          # 600 images
    python benchmarks/data_cache.py --images 5000 --workers 0 2 --root /tmp/jpegs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrieval_bio import datasets


def write_jpegs(root: Path, n: int, seed: int = 0) -> float:
    """``root/images/<i>.jpg`` and list files (every image in train.txt; test.txt and
    database.txt list the first 20). Returns the mean file size in KiB. Files already there
    (``--root`` reused) are kept."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rel = f"images/{i:05d}.jpg"
        path = root / rel
        if not path.is_file():
            w, h = (int(x) for x in rng.integers(300, 501, size=2))
            # low-frequency colour field plus grain: compresses like a photo, unlike noise
            coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
            grain = rng.normal(0, 6, size=field.shape)
            pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        vec = ["0"] * 10
        vec[i % 10] = "1"
        lines.append(f"{rel} {' '.join(vec)}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    for name in ("test.txt", "database.txt"):
        (root / name).write_text("\n".join(lines[:20]) + "\n")
    return float(np.mean([(root / ln.split()[0]).stat().st_size for ln in lines])) / 1024


def epoch(split, batch: int, workers: int) -> tuple[float, int]:
    """Seconds for one shuffled pass over ``split`` and the number of images seen."""
    loader = DataLoader(split, batch_size=batch, shuffle=True, num_workers=workers)
    seen = 0
    t0 = time.perf_counter()
    for images, _, _ in loader:
        seen += images.shape[0]
    return time.perf_counter() - t0, seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3000, help="JPEGs to write (default 3000)")
    ap.add_argument("--quick", action="store_true", help="600 images")
    ap.add_argument("--root", type=Path, default=None,
                    help="folder for the JPEGs (kept; default a temporary folder)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 32],
                    help="image sizes (> 64: crop mode, else resize mode)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0],
                    help="DataLoader worker counts to time")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of this process (default 1, as in DataLoader workers: "
                         "per-item ToTensor on several threads stalls on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 600 if args.quick else args.images

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "jpegs"
        t0 = time.perf_counter()
        kib = write_jpegs(root, n)
        print(f"{n} JPEGs in {root}: mean {kib:.0f} KiB, written in "
              f"{time.perf_counter() - t0:.1f} s")
        for size in args.sizes:
            mode = "crop" if size > 64 else "resize"
            cache = Path(tmp) / f"cache-{size}"
            decoded = datasets.load("list", str(root), image_size=size, augment=True)
            t0 = time.perf_counter()
            cached = datasets.load("list", str(root), image_size=size, augment=True,
                                   cache_dir=str(cache))
            build = time.perf_counter() - t0
            mib = sum(p.stat().st_size for p in cache.glob("*.u8")) / 2**20
            print(f"\n{size} px ({mode} mode), train split {len(decoded.train)} images; "
                  f"cache build {build:.1f} s, {mib:.0f} MiB on disk")
            for w in args.workers:
                t_dec, seen = epoch(decoded.train, args.batch, w)
                t_cache, seen_c = epoch(cached.train, args.batch, w)
                assert seen == seen_c == len(decoded.train)
                print(f"  workers {w}: decode {seen / t_dec:8.0f} img/s ({t_dec:6.1f} s)   "
                      f"cache {seen / t_cache:8.0f} img/s ({t_cache:6.1f} s)   "
                      f"ratio {t_dec / t_cache:5.1f}x")


if __name__ == "__main__":
    main()
