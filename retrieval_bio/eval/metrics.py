"""Retrieval metrics over binary codes: mAP@k, precision/recall@k, PR curve, P@H<=2 (SPEC §5).

Plain functions over arrays, usable on codes produced anywhere (STYLE "FAISS"). Common
arguments:

* ``query_codes`` ``(Q, K)``, ``db_codes`` ``(N, K)``: codes in {-1, +1} (numpy or torch, any
  numeric dtype). Distance is Hamming, ``(K - q.b) / 2`` bits.
* ``query_labels`` ``(Q, C)``, ``db_labels`` ``(N, C)``: multi-hot (nonzero = has the label),
  or integer class ids ``(Q,)``/``(N,)`` for single-label data. A query and a database item
  are relevant when they share at least one label.
* ``k``: cutoff; ``k <= 0`` or ``k > N`` means the whole database.
* ``ties``: how items at equal distance are ordered. ``"index"``: by ascending database
  position (stable; FAISS's order -- shuffle the database once, seeded, so class order does
  not leak into it). ``"expected"``: the exact expectation over uniformly random orders within
  each group of equal distance (closed form, :mod:`._expected`).
* ``per_query``: return the ``(Q,)`` float64 per-query values instead of their mean.

Every query stays in every mean: a query with no relevant item where the metric looks counts 0.

Speed: ``map_at_k``/``precision_at_k``/``recall_at_k`` rank by XOR + popcount and a radix sort
of the few candidates near each query (``_ranking``), not a full sort per query, and split the
queries over the usable CPUs (set ``RETRIEVAL_BIO_THREADS`` to change that). Results do not
depend on the thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _expected
from ._ranking import (
    BLOCK,
    candidates,
    code_words,
    distances_block,
    iter_blocks,
    label_words,
    relevance,
    threads,
    top_k,
)

TIES = ("index", "expected")


@dataclass
class _Inputs:
    q: np.ndarray
    db: np.ndarray
    bits: int
    ql: np.ndarray
    dl: np.ndarray  # label words transposed, (W, N)


def _prepare(query_codes, db_codes, query_labels, db_labels) -> _Inputs:
    q, bits = code_words(query_codes, "query_codes")
    db, db_bits = code_words(db_codes, "db_codes")
    if bits != db_bits:
        raise ValueError(f"query_codes have {bits} bits but db_codes have {db_bits}")
    ql = label_words(query_labels, "query_labels")
    dl = label_words(db_labels, "db_labels")
    if len(ql) != len(q):
        raise ValueError(f"{len(ql)} query_labels for {len(q)} query_codes")
    if len(dl) != len(db):
        raise ValueError(f"{len(dl)} db_labels for {len(db)} db_codes")
    if ql.shape[1] != dl.shape[1]:  # class ids with different maxima: pad the narrower
        w = max(ql.shape[1], dl.shape[1])
        ql = np.pad(ql, ((0, 0), (0, w - ql.shape[1])))
        dl = np.pad(dl, ((0, 0), (0, w - dl.shape[1])))
    if len(db) == 0:
        raise ValueError("db_codes is empty")
    return _Inputs(q, db, bits, ql, np.ascontiguousarray(dl.T))


def _effective_k(k: int, n: int) -> int:
    return n if k <= 0 or k > n else int(k)


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}; got {ties!r}")


def _reduce(values: np.ndarray, per_query: bool) -> float | np.ndarray:
    if per_query:
        return values
    return float(values.mean()) if len(values) else 0.0


def _topk_stats(x: _Inputs, k: int, ties: str, want_ap: bool):
    """Per query: AP@k (if ``want_ap``) and the (expected) number of relevant in the top k.

    Query chunks run on up to ``threads()`` threads: the heavy numpy calls release the GIL.
    """
    n_q = len(x.q)
    ap = np.zeros(n_q)
    hits = np.zeros(n_q)
    n_threads = max(1, min(threads(), n_q // BLOCK))
    bounds = np.linspace(0, n_q, n_threads + 1).astype(int)
    chunks = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    if n_threads == 1:
        _topk_chunk(x, chunks[0], k, ties, want_ap, ap, hits)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            jobs = [pool.submit(_topk_chunk, x, ch, k, ties, want_ap, ap, hits) for ch in chunks]
            for job in jobs:
                job.result()
    return ap, hits


def _ap_sums(rel: np.ndarray, inv_rank: np.ndarray, want_ap: bool):
    """Per row of ``rel`` ``(b, k)``: relevant count and sum over relevant ranks p of
    (relevant in the first p) / p, the AP numerator."""
    b, k = rel.shape
    if not want_ap:
        return np.count_nonzero(rel, axis=1), None
    if np.count_nonzero(rel) > 0.25 * rel.size:  # dense: a cumulative sum is cheaper
        cum = np.cumsum(rel, axis=1, dtype=np.int32)
        count = cum[:, -1].copy()
        cum[~rel] = 0
        return count, cum @ inv_rank
    # Sparse: the j-th relevant item at rank p adds j / p.
    flat = np.flatnonzero(rel)
    rows = flat // k
    ranks = flat - rows * k
    count = np.bincount(rows, minlength=b)
    j = np.arange(1, len(rows) + 1) - np.repeat(np.cumsum(count) - count, count)
    return count, np.bincount(rows, weights=j * inv_rank[ranks], minlength=b)


def _topk_chunk(x: _Inputs, chunk: slice, k: int, ties: str, want_ap: bool,
                ap: np.ndarray, hits: np.ndarray) -> None:
    """Fill ``ap[chunk]`` and ``hits[chunk]`` block by block."""
    inv_rank = 1.0 / np.arange(1, k + 1)
    h = _expected.harmonic(k) if ties == "expected" else None
    for blk, dist, sample in iter_blocks(x.q[chunk], x.db, x.bits):
        sl = slice(chunk.start + blk.start, chunk.start + blk.stop)
        c = candidates(dist, k, sample, x.bits)
        if ties == "index":
            cols = top_k(c, k)
            rel = relevance(x.ql[sl], x.dl, cols)
            # AP numerator: the j-th relevant item at rank p adds j / p.
            count, num = _ap_sums(rel, inv_rank, want_ap)
            hits[sl] = count
            if want_ap:
                ap[sl] = np.where(count > 0, num / np.maximum(count, 1), 0.0)
            continue
        # ties="expected": group sizes and relevant counts per distance from the candidates,
        # which hold every group up to the one straddling rank k.
        b = len(c.count)
        row = c.row
        rel = relevance(x.ql[sl][row], x.dl, (c.flat - row * c.n)[:, None])[:, 0]
        key = row * (x.bits + 1) + c.dist
        size = np.bincount(key, minlength=b * (x.bits + 1)).reshape(b, -1)
        nrel = np.bincount(key, weights=rel, minlength=b * (x.bits + 1)).reshape(b, -1)
        nrel = nrel.astype(np.int64)
        for j, qi in enumerate(range(sl.start, sl.stop)):
            hits[qi] = _expected.expected_hits(size[j], nrel[j], k)
            if want_ap:
                ap[qi] = _expected.expected_ap(size[j], nrel[j], k, h)


def map_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    ties: str = "index",
    per_query: bool = False,
) -> float | np.ndarray:
    """Mean average precision of the top k by Hamming distance (seed 001 Appendix A).

    AP@k = (1/R) sum over ranks r <= k holding a relevant item of (relevant in the first r)/r,
    R the number of relevant items in the top k; R = 0 gives AP 0 (kept in the mean). See the
    module docstring for arguments. Returns the mean over queries (float), or per-query APs
    float64 ``(Q,)`` with ``per_query=True``.
    """
    _check_ties(ties)
    x = _prepare(query_codes, db_codes, query_labels, db_labels)
    ap, _ = _topk_stats(x, _effective_k(k, len(x.db)), ties, want_ap=True)
    return _reduce(ap, per_query)


def precision_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    ties: str = "index",
    per_query: bool = False,
) -> float | np.ndarray:
    """Share of relevant items among the top k retrieved (k as in :func:`map_at_k`).

    The denominator is min(k, N), the number retrieved. ``ties="expected"``: exact expectation.
    Returns the mean (float) or per-query values ``(Q,)``.
    """
    _check_ties(ties)
    x = _prepare(query_codes, db_codes, query_labels, db_labels)
    k_eff = _effective_k(k, len(x.db))
    _, hits = _topk_stats(x, k_eff, ties, want_ap=False)
    return _reduce(hits / k_eff, per_query)


def recall_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    ties: str = "index",
    per_query: bool = False,
) -> float | np.ndarray:
    """Share of all the database's relevant items that appear in the top k.

    A query with no relevant item in the whole database gets 0. Returns the mean (float) or
    per-query values ``(Q,)``.
    """
    _check_ties(ties)
    x = _prepare(query_codes, db_codes, query_labels, db_labels)
    _, hits = _topk_stats(x, _effective_k(k, len(x.db)), ties, want_ap=False)
    total = _total_relevant(x)
    return _reduce(np.where(total > 0, hits / np.maximum(total, 1), 0.0), per_query)


def _total_relevant(x: _Inputs) -> np.ndarray:
    total = np.zeros(len(x.q))
    for start in range(0, len(x.q), 64):
        sl = slice(start, min(start + 64, len(x.q)))
        total[sl] = relevance(x.ql[sl], x.dl).sum(axis=1)
    return total


def _radius_counts(x: _Inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: items within radius r and relevant ones within r, ``(Q, K+1)`` each for
    r = 0..K, and the total relevant ``(Q,)``."""
    n_q, kk = len(x.q), x.bits + 1
    within = np.zeros((n_q, kk), np.int64)
    rel_within = np.zeros((n_q, kk), np.int64)
    for start in range(0, n_q, 64):
        sl = slice(start, min(start + 64, n_q))
        b = sl.stop - sl.start
        dist = distances_block(x.q[sl], x.db, x.bits)
        rel = relevance(x.ql[sl], x.dl)
        key = (dist + np.arange(b, dtype=np.int64)[:, None] * kk).ravel()
        within[sl] = np.bincount(key, minlength=b * kk).reshape(b, kk)
        rel_within[sl] = np.bincount(key, weights=rel.ravel(), minlength=b * kk).reshape(b, kk)
    within = within.cumsum(axis=1)
    rel_within = rel_within.cumsum(axis=1)
    return within, rel_within, rel_within[:, -1].astype(np.float64)


@dataclass
class PRCurve:
    """Precision and recall of the items within Hamming radius r, for r = 0..K.

    ``radius`` int ``(K+1,)``; ``precision``, ``recall`` float64 ``(K+1,)`` (means over
    queries) or ``(Q, K+1)`` with ``per_query=True``.
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


def pr_curve(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    per_query: bool = False,
) -> PRCurve:
    """Precision-recall curve over Hamming radii 0..K (ties play no part: radius sets are
    order-free).

    At radius r a query retrieves every item at distance <= r. Precision: relevant share of
    those (0 when nothing is within r, as in DeepHash); recall: share of the database's
    relevant items retrieved (0 when the query has none).
    """
    x = _prepare(query_codes, db_codes, query_labels, db_labels)
    within, rel_within, total = _radius_counts(x)
    precision = np.where(within > 0, rel_within / np.maximum(within, 1), 0.0)
    recall = np.where(total[:, None] > 0, rel_within / np.maximum(total, 1)[:, None], 0.0)
    if not per_query:
        precision, recall = precision.mean(axis=0), recall.mean(axis=0)
    return PRCurve(np.arange(x.bits + 1), precision, recall)


def precision_within_radius(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    radius: int = 2,
    per_query: bool = False,
) -> float | np.ndarray:
    """P@H<=radius: relevant share of the items within Hamming distance ``radius`` (inclusive).

    A query with nothing within the radius gets precision 0 and stays in the mean (DeepHash's
    convention; it penalises codes that spread queries away from the database). Returns the
    mean (float) or per-query values ``(Q,)``.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    x = _prepare(query_codes, db_codes, query_labels, db_labels)
    within, rel_within, _ = _radius_counts(x)
    r = min(int(radius), x.bits)
    p = np.where(within[:, r] > 0, rel_within[:, r] / np.maximum(within[:, r], 1), 0.0)
    return _reduce(p, per_query)


def hamming_distances(query_codes: Any, db_codes: Any) -> np.ndarray:
    """All Hamming distances, int32 ``(Q, N)``, between ±1 codes ``(Q, K)`` and ``(N, K)``."""
    q, bits = code_words(query_codes, "query_codes")
    db, db_bits = code_words(db_codes, "db_codes")
    if bits != db_bits:
        raise ValueError(f"query_codes have {bits} bits but db_codes have {db_bits}")
    out = np.empty((len(q), len(db)), np.int32)
    for start in range(0, len(q), 64):
        out[start:start + 64] = distances_block(q[start:start + 64], db, bits)
    return out
