"""(distance, id) ordering and the shard merge behind searches with large k.

``GpuIndexBinaryFlat`` answers at most k = 2048 per search (SPEC §5). For larger k the
database is split into shards of at most 2048 codes; each shard search then returns its
*whole* shard, sorted, so no candidate is lost, and the running top-k is merged shard by shard
in (distance, id) order. The same code runs on CPU flat shards, which is how it is tested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def sort_rows(distances: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of ``(Q, k)`` results by (distance, id), -1 padding last."""
    return merge_topk(distances, ids, distances[:, :0], ids[:, :0], distances.shape[1])


def merge_topk(
    d_a: np.ndarray, i_a: np.ndarray, d_b: np.ndarray, i_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-query result sets ``(Q, ka)``, ``(Q, kb)`` into the k smallest.

    Order is (distance, id); ids of -1 are padding and are dropped before padding again.
    Returns ``(distances int32 (Q, k), ids int64 (Q, k))``.
    """
    d = np.concatenate([d_a, d_b], axis=1).astype(np.int64)
    i = np.concatenate([i_a, i_b], axis=1).astype(np.int64)
    valid = i >= 0
    # One int64 key per pair orders by distance, then id (ids < 2**40, distances < 2**22).
    key = np.where(valid, (d << 40) | np.where(valid, i, 0), np.iinfo(np.int64).max)
    take = min(k, key.shape[1])
    if take < key.shape[1]:
        part = np.argpartition(key, take - 1, axis=1)[:, :take]
        key = np.take_along_axis(key, part, axis=1)
    key.sort(axis=1)
    pad = key == np.iinfo(np.int64).max
    out_d = np.where(pad, -1, key >> 40).astype(np.int32)
    out_i = np.where(pad, -1, key & ((1 << 40) - 1)).astype(np.int64)
    if take < k:
        q = out_d.shape[0]
        out_d = np.concatenate([out_d, np.full((q, k - take), -1, np.int32)], axis=1)
        out_i = np.concatenate([out_i, np.full((q, k - take), -1, np.int64)], axis=1)
    return out_d, out_i


def sharded_search(
    shard_search: Sequence[Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]],
    shard_offsets: Sequence[int],
    shard_sizes: Sequence[int],
    queries: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over shards whose own search can return at most ``shard_sizes[s]`` items.

    ``shard_search[s](queries, ks)`` must return (distances, local ids) of shard ``s``; it is
    called with ``ks = shard_sizes[s]`` so it returns the whole shard and no candidate is
    missed whatever order the shard uses among ties. Local ids are shifted by
    ``shard_offsets[s]`` and merged into the running top-k in (distance, id) order.
    """
    q = queries.shape[0]
    best_d = np.full((q, 0), -1, np.int32)
    best_i = np.full((q, 0), -1, np.int64)
    for search, offset, size in zip(shard_search, shard_offsets, shard_sizes, strict=True):
        if size == 0:
            continue
        d, i = search(queries, int(size))
        i = np.where(i >= 0, i.astype(np.int64) + offset, -1)
        best_d, best_i = merge_topk(best_d, best_i, d, i, k)
    if best_d.shape[1] < k:
        best_d, best_i = merge_topk(best_d, best_i, best_d[:, :0], best_i[:, :0], k)
    return best_d, best_i
