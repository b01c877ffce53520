"""Fast exact top-k ranking by Hamming distance, the engine behind ``map_at_k``.

With K-bit codes there are only K + 1 distances, so no general sort of the database is needed.
For a block of queries: XOR + popcount over codes packed into machine words gives every
distance (uint8). A per-query distance threshold t, guessed from the distances to a fixed
subsample of the database so that at least k codes lie within it, keeps only the candidates
with distance <= t (rows where the guess falls short get t raised until it does not). Every
other code is farther than every candidate, so the top k are the first k candidates after a
stable sort on their uint8 distance (numpy's stable sort of small integers is a radix sort),
and since candidates come in database order, that is (distance, index) order -- the order of
a stable argsort of the whole row, and of FAISS's flat index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..index.codes import check_pm1, to_numpy


def threads() -> int:
    """Threads used for ranking: ``RETRIEVAL_BIO_THREADS`` if set, else the usable CPUs."""
    env = os.environ.get("RETRIEVAL_BIO_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


BLOCK = 8  # queries per block: keeps the (block, N) work arrays within the CPU caches
_SAMPLE = 1024  # database codes used to guess each query's threshold


def code_words(codes: Any, name: str) -> tuple[np.ndarray, int]:
    """±1 codes ``(N, K)`` -> bit words ``(N, W)`` (uint32 when K <= 32, else uint64), K."""
    arr = check_pm1(codes, name=name)
    n, bits = arr.shape
    packed = np.packbits(arr > 0, axis=1)
    word = 4 if bits <= 32 else 8
    pad = (-packed.shape[1]) % word
    if pad:
        packed = np.concatenate([packed, np.zeros((n, pad), np.uint8)], axis=1)
    dtype = np.uint32 if word == 4 else np.uint64
    # Byte order inside a word does not matter: only popcounts of XORs are used.
    return np.ascontiguousarray(packed).view(dtype).reshape(n, -1), bits


def label_words(labels: Any, name: str) -> np.ndarray:
    """Multi-hot ``(N, C)`` (nonzero = has label) or class ids ``(N,)`` -> uint64 ``(N, W)``.

    Two items are relevant when their words share a set bit (SPEC §1).
    """
    arr = to_numpy(labels)
    if arr.ndim == 1:
        if arr.dtype.kind not in "iu":
            raise ValueError(f"1-D {name} must be integer class ids; got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} class ids must be >= 0; got {arr.min()}")
        n_classes = int(arr.max()) + 1 if arr.size else 1
        multi = np.zeros((len(arr), n_classes), bool)
        multi[np.arange(len(arr)), arr] = True
        arr = multi
    if arr.ndim != 2:
        raise ValueError(f"{name} must be multi-hot (N, C) or class ids (N,); got {arr.shape}")
    hot = arr != 0
    n, c = hot.shape
    pad = (-c) % 64
    if pad:
        hot = np.concatenate([hot, np.zeros((n, pad), bool)], axis=1)
    packed = np.packbits(hot, axis=1)
    return np.ascontiguousarray(packed).view(np.uint64).reshape(n, -1)


def distances_block(
    q_words: np.ndarray, db_words: np.ndarray, bits: int, out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Hamming distances ``(b, N)`` between word-packed codes: uint8, or uint16 if K > 255.

    ``out`` (distance dtype) and ``scratch`` (word dtype), both at least ``(b, N)``, are
    reused buffers: fresh multi-megabyte arrays per block cost page faults.
    """
    b, n = len(q_words), len(db_words)
    dtype = np.uint8 if bits <= 255 else np.uint16
    out = np.empty((b, n), dtype) if out is None else out[:b]
    scratch = np.empty((b, n), db_words.dtype) if scratch is None else scratch[:b]
    for w in range(q_words.shape[1]):
        np.bitwise_xor(q_words[:, w, None], db_words[None, :, w], out=scratch)
        if w == 0:
            np.bitwise_count(scratch, out=out, casting="unsafe")
        else:
            out += np.bitwise_count(scratch).astype(dtype)
    return out


def relevance(
    q_labels: np.ndarray, db_labels: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """Boolean ``(b, m)``: does query row j share a label with database item ``cols[j, i]``.

    ``q_labels`` ``(b, W)``, ``db_labels`` ``(W, N)`` label words *transposed* (each word a
    contiguous row, which makes the gather cheap); ``cols`` ``(b, m)``, or None for every
    database item (m = N).
    """
    rel = None
    for w in range(q_labels.shape[1]):
        words = db_labels[w][None, :] if cols is None else db_labels[w][cols]
        hit = np.bitwise_and(words, q_labels[:, w, None]) != 0
        rel = hit if rel is None else rel | hit
    assert rel is not None
    return rel


@dataclass
class Candidates:
    """The codes with distance <= a per-query threshold, for a block of b queries.

    ``flat``: positions in the flattened ``(b, N)`` block, row-major, so each row's candidates
    are in ascending database index; ``dist``: their distances;
    ``count``: candidates per row, each >= k; ``n``: database size.
    """

    flat: np.ndarray
    dist: np.ndarray
    count: np.ndarray
    n: int

    @property
    def row(self) -> np.ndarray:
        """Block row of each candidate."""
        return np.repeat(np.arange(len(self.count), dtype=np.int64), self.count)

    @property
    def col(self) -> np.ndarray:
        """Database index of each candidate."""
        return self.flat - self.row * self.n


def candidates(dist: np.ndarray, k: int, sample: np.ndarray, bits: int) -> Candidates:
    """All codes of each row within a threshold that keeps at least ``k`` of them.

    ``dist`` ``(b, N)`` distances; ``sample`` ``(b, S)`` distances to a fixed subsample of the
    database, used to guess the threshold; ``k`` <= N.
    """
    b, n = dist.shape
    if k >= n:
        thresh = np.full(b, bits, dist.dtype)
    else:
        s = sample.shape[1]
        hist = _row_hist(sample, bits).cumsum(axis=1)
        # A margin above the expected count makes the guess rarely short.
        target = min(s, k / n * s * 1.05 + 4)
        thresh = np.argmax(hist >= target, axis=1).astype(dist.dtype)
    flat, count = _within(dist, thresh)
    short = np.flatnonzero(count < k)
    if short.size:  # raise the threshold of the rows the guess missed; redo only those rows
        pieces = np.split(flat, np.cumsum(count)[:-1])
        for r in short:
            t = int(thresh[r]) + 1
            while np.count_nonzero(dist[r] <= t) < k:  # usually one step
                t += 1
            pieces[r] = np.flatnonzero(dist[r] <= t) + r * n
            count[r] = len(pieces[r])
        flat = np.concatenate(pieces)
    return Candidates(flat, dist.ravel()[flat], count, n)


def _within(dist: np.ndarray, thresh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of ``dist <= thresh`` (row-wise thresholds) and the count per row."""
    b, n = dist.shape
    flat = np.flatnonzero(dist <= thresh[:, None])
    ends = np.searchsorted(flat, np.arange(1, b + 1, dtype=np.int64) * n)
    return flat, np.diff(ends, prepend=0)


def _row_hist(dist: np.ndarray, bits: int) -> np.ndarray:
    """Per-row histogram ``(b, bits + 1)`` of small integer distances."""
    b = dist.shape[0]
    offsets = np.arange(b, dtype=np.int64)[:, None] * (bits + 1)
    return np.bincount((dist + offsets).ravel(), minlength=b * (bits + 1)).reshape(b, bits + 1)


def top_k(c: Candidates, k: int) -> np.ndarray:
    """Database indices ``(b, k)`` of each row's k nearest, in (distance, index) order.

    Each row's candidates are already in index order, so a stable sort on the uint8 distance
    alone (numpy: one radix pass) gives (distance, index) order.
    """
    b = len(c.count)
    ends = np.cumsum(c.count)
    out = np.empty((b, k), np.int64)
    for r in range(b):
        lo, hi = ends[r] - c.count[r], ends[r]
        order = np.argsort(c.dist[lo:hi], kind="stable")[:k]
        np.subtract(c.flat[lo:hi].take(order), r * c.n, out=out[r])
    return out


def iter_blocks(
    q_words: np.ndarray, db_words: np.ndarray, bits: int, block: int = BLOCK
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(query slice, distances (b, N), sample distances (b, S))`` block by block.

    The distance array is a reused buffer, overwritten by the next block.
    """
    n = len(db_words)
    step = max(1, n // _SAMPLE)
    sample_words = db_words[::step]
    dtype = np.uint8 if bits <= 255 else np.uint16
    out = np.empty((min(block, len(q_words)), n), dtype)
    scratch = np.empty((min(block, len(q_words)), n), db_words.dtype)
    for start in range(0, len(q_words), block):
        sl = slice(start, min(start + block, len(q_words)))
        qb = q_words[sl]
        dist = distances_block(qb, db_words, bits, out, scratch)
        yield sl, dist, distances_block(qb, sample_words, bits)
