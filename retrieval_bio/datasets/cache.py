"""Opt-in decoded-image cache: a dataset's images decoded once into a uint8 memory map.

``datasets.load(..., cache_dir=DIR)`` makes every loader that reads image files (list files,
COCO, ImageNet trees, CIFAR-10 class folders) decode its pool of images once, run the
deterministic first step of the transform (:meth:`SplitTransform.prepare`: the resize, plus
for crop mode an ``r x r`` window, see ``transforms.py``) and store the result in
``DIR/<stem>.u8``, a raw uint8 array ``(N, side, side, 3)`` read through ``np.memmap``.
Splits then index rows of that array (:class:`CachedSplit`) and run only the rest of the
transform (crop, flip, ``ToTensor``) per access: no JPEG decode, no resize.

Files per cache, ``<stem> = <dataset>-<mode><size>-<key>`` with ``key`` a digest of dataset
name, transform mode, image size and the folder holding the images, so several datasets,
sizes and roots share one folder without collisions while an edited list reuses its stem:

* ``<stem>.u8``: the array, N * side * side * 3 bytes;
* ``<stem>.json``: the manifest (format version, dataset, mode, image size, N, side and two
  digests of the ordered source list: absolute paths; paths + file size + mtime_ns);
* ``<stem>.lock``: an ``flock`` lock file, so that of several processes opening the same
  cache at once (torchrun ranks) one builds while the others wait and then re-check.

On open the manifest is compared with the current source list: any difference (a list line
added, dropped or moved, an image file rewritten or touched, another size) rebuilds the
cache, with a log line saying why. Building writes a temporary file in the folder, fsyncs
it, renames it over the array and writes the manifest last, so a crash or a bad image
leaves no cache that could be taken for valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .images import open_rgb
from .transforms import SplitTransform

try:
    import fcntl
except ImportError:  # not on Windows: no cross-process lock there (documented)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_COMPARED = ("version", "dataset", "mode", "image_size", "count", "side", "paths_sha256",
             "files_sha256")
_BLOCK = 256  # images decoded per batch of thread-pool work during a build


@dataclass(frozen=True)
class CacheFiles:
    """The files of one cache: ``array`` (``.u8``), ``manifest`` (``.json``), ``lock``."""

    folder: Path
    stem: str

    @property
    def array(self) -> Path:
        return self.folder / f"{self.stem}.u8"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.stem}.lock"


class ImageCache:
    """A built cache: rows of a uint8 ``(N, side, side, 3)`` array stored at ``path``.

    The memory map is opened on first access and dropped when pickled, so a copy sent to a
    DataLoader worker process (or any pickled copy) reopens the file itself.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int, int]) -> None:
        self.path = Path(path)
        self.shape = tuple(int(x) for x in shape)
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        """Image ``row`` as a uint8 ``(side, side, 3)`` array (a copy, not a view of the map)."""
        if self._array is None:
            self._array = _open_array(self.path, self.shape)
        return np.array(self._array[row])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # a memory map does not pickle; the receiver reopens the file
        return state


def _open_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:
        return np.zeros(shape, np.uint8)  # mmap cannot map an empty file
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


class CachedSplit(Dataset):
    """A split reading its images from an :class:`ImageCache`; items as every split's.

    Args:
        cache: the pool's decoded images.
        rows: the N cache rows forming this split, in split order.
        labels: multi-hot labels ``(N, C)``.
        transform: the split's transform; :meth:`SplitTransform.finish` runs per access.
        paths: the N source image files (kept for reference, as ``ImageFileSplit.paths``).
    """

    in_memory = True  # reads are memory-map copies, cheap enough for the main process

    def __init__(
        self, cache: ImageCache, rows: np.ndarray, labels: torch.Tensor,
        transform: SplitTransform, paths: Sequence[str] | None = None,
    ) -> None:
        self._attach(cache, rows, transform, paths)
        if len(self.rows) != labels.shape[0]:
            raise ValueError(f"{len(self.rows)} rows but {labels.shape[0]} labels")
        self.labels = labels.float()

    def _attach(
        self, cache: ImageCache, rows: np.ndarray, transform: SplitTransform,
        paths: Sequence[str] | None,
    ) -> None:
        """Everything but the labels (subclasses may keep labels in another form)."""
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.paths = list(paths) if paths is not None else None

    def __len__(self) -> int:
        return len(self.rows)

    def label(self, i: int) -> torch.Tensor:
        """Label ``(C,)`` of item ``i``."""
        return self.labels[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform.finish(self.cache[self.rows[i]]), self.label(i), int(i)


def open_image_cache(
    cache_dir: str | Path, name: str, paths: Sequence[str], transform: SplitTransform,
    origins: Sequence[tuple[str, int | None]] | None = None, threads: int | None = None,
) -> tuple[ImageCache, np.ndarray]:
    """Open (building it first when missing or stale) the cache of a pool of image files.

    Args:
        cache_dir: cache folder (created if absent).
        name: dataset name, part of the file names and the manifest.
        paths: the pool's M image files; a file listed twice is stored once.
        transform: any split transform of the pool; only its mode and size matter.
        origins: per path, the ``(list file, line)`` it came from, named by errors.
        threads: decoding threads during a build (default: the CPU count, at most 8).

    Returns:
        ``(cache, rows)``: the cache and, per pool item, its row (int64 ``(M,)``).

    Raises:
        DatasetError: the folder is not writable (naming it and the fix); an image is
            missing or cannot be decoded (naming it and its list line), no cache written.
    """
    if not isinstance(transform, SplitTransform):
        raise TypeError(f"the image cache needs make_transform's SplitTransform, got "
                        f"{type(transform).__name__}")
    folder = _writable_folder(Path(cache_dir))
    unique, rows, first = _dedupe(paths)
    where = [origins[i] for i in first] if origins is not None else None
    files = CacheFiles(folder, _stem(name, transform, unique))
    want = source_manifest(name, unique, transform, where)
    side = transform.stored_side
    shape = (len(unique), side, side, 3)
    reason = stale_reason(_read_manifest(files.manifest), want, files.array)
    if reason is not None:
        with _locked(files.lock):
            # another process may have built it while this one waited for the lock
            reason = stale_reason(_read_manifest(files.manifest), want, files.array)
            if reason is not None:
                log.info("data cache %s: building %d images (%s)", files.array, len(unique),
                         reason)
                _build(files, unique, transform, where, want, shape, threads)
    return ImageCache(files.array, shape), rows


def _dedupe(paths: Sequence[str]) -> tuple[list[str], np.ndarray, list[int]]:
    """Unique paths in first-appearance order, each path's row, each row's first index."""
    row_of: dict[str, int] = {}
    first: list[int] = []
    rows = np.empty(len(paths), dtype=np.int64)
    for i, p in enumerate(paths):
        r = row_of.setdefault(p, len(row_of))
        if r == len(first):
            first.append(i)
        rows[i] = r
    return list(row_of), rows, first


def _stem(name: str, transform: SplitTransform, paths: Sequence[str]) -> str:
    # The key leaves out the list itself so that an edited list rebuilds the same files
    # (with a reason logged) rather than leaving the old cache behind as an orphan.
    root = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else ""
    key = _digest([name, transform.mode, transform.image_size, root])[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"
    return f"{safe}-{transform.mode}{transform.image_size}-{key}"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def source_manifest(
    name: str, paths: Sequence[str], transform: SplitTransform,
    origins: Sequence[tuple[str, int | None]] | None = None,
) -> dict:
    """The manifest a cache of ``paths`` must carry: settings and source-list digests.

    ``paths_sha256`` digests the ordered absolute paths, ``files_sha256`` adds each file's
    size and ``mtime_ns`` (one ``stat`` per image).

    Raises:
        DatasetError: an image file is missing, naming it (and its list line when known).
    """
    by_path, by_file = hashlib.sha256(), hashlib.sha256()
    for i, p in enumerate(paths):
        full = os.path.abspath(p)
        try:
            st = os.stat(full)
        except OSError as e:
            raise DatasetError(f"cannot read image {p}: {e.strerror or e}"
                               f"{_listed(origins, i)}") from e
        by_path.update(f"{full}\n".encode())
        by_file.update(f"{full}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"version": FORMAT_VERSION, "dataset": name, "mode": transform.mode,
            "image_size": transform.image_size, "count": len(paths),
            "side": transform.stored_side, "paths_sha256": by_path.hexdigest(),
            "files_sha256": by_file.hexdigest()}


def stale_reason(old: dict | None, want: dict, array: Path) -> str | None:
    """Why a cache with manifest ``old`` and array file ``array`` cannot serve ``want``;
    ``None`` when it can."""
    if old is None:
        return "no cache yet"
    if old.get("version") != want["version"]:
        return f"cache format {old.get('version')} is not the current {want['version']}"
    if old.get("paths_sha256") != want["paths_sha256"]:
        return (f"the image list changed ({old.get('count')} images then, {want['count']} "
                f"now, or another order)")
    if old.get("files_sha256") != want["files_sha256"]:
        return "an image file changed since the build (size or modification time)"
    changed = [k for k in _COMPARED if old.get(k) != want[k]]
    if changed:
        return f"settings changed: {', '.join(changed)}"
    need = want["count"] * want["side"] ** 2 * 3
    try:
        size = array.stat().st_size
    except OSError:
        return f"array file {array.name} is missing"
    if size != need:
        return f"array file {array.name} holds {size} bytes, expected {need}"
    return None


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: treated as no cache


def _writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DatasetError(
            f"data cache folder {folder} is not writable ({e.strerror or e}); pass a writable "
            f"folder as cache_dir= / --data-cache DIR, or leave it unset to decode the images "
            f"on every access"
        ) from e
    return folder


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent; left in place, since
    removing a lock file other processes may be waiting on would break the lock)."""
    with open(path, "a+b") as f:
        held = fcntl is not None
        if held:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("data cache %s: waiting for another process to finish it", path.stem)
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError as e:  # e.g. a network file system without locks
                # builds stay atomic (rename), concurrent ones merely duplicate the work
                log.warning("data cache %s: no lock (%s); concurrent builds may repeat work",
                            path.stem, e)
                held = False
        try:
            yield
        finally:
            if held:
                fcntl.flock(f, fcntl.LOCK_UN)


def _build(
    files: CacheFiles, paths: Sequence[str], transform: SplitTransform,
    origins: Sequence[tuple[str, int | None]] | None, manifest: dict,
    shape: tuple[int, int, int, int], threads: int | None,
) -> None:
    """Decode every image into a temporary file, then move it and the manifest in place."""
    t0 = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=files.folder, prefix=f"{files.stem}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if shape[0]:
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
            for i, image in _decode_all(paths, transform, origins, threads):
                out[i] = image
            out.flush()
            del out
        _fsync(tmp)
        # No manifest from here until the new one is written: a crash in between leaves a
        # cache that is rebuilt, never an old manifest beside a new array.
        files.manifest.unlink(missing_ok=True)
        os.replace(tmp, files.array)
        _write_atomically(files.manifest, json.dumps(manifest, indent=1) + "\n")
        _fsync(files.folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    mib = shape[0] * shape[1] * shape[2] * 3 / 2**20
    log.info("data cache %s: built %d images (%.1f MiB) in %.1f s", files.array, shape[0],
             mib, time.perf_counter() - t0)


def _decode_all(
    paths: Sequence[str], transform: SplitTransform,
    origins: Sequence[tuple[str, int | None]] | None, threads: int | None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(row, prepared uint8 image)`` for every path, in order, decoded by a thread pool
    (PIL releases the GIL while decoding and resizing)."""

    def one(i: int) -> np.ndarray:
        try:
            return transform.prepare(open_rgb(paths[i]))
        except DatasetError as e:
            raise DatasetError(f"{e}{_listed(origins, i)}") from e.__cause__

    n = len(paths)
    step = max(n // 10, _BLOCK)
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            yield from enumerate(pool.map(one, range(start, stop)), start)
            if stop < n and stop // step != start // step:
                log.info("data cache: %d / %d images decoded", stop, n)


def _listed(origins: Sequence[tuple[str, int | None]] | None, i: int) -> str:
    if origins is None or origins[i][1] is None:
        return ""
    where, line = origins[i]
    return f" (listed at {where}:{line})"


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)
