"""Exact expectation of AP@k over uniformly random orders within tie groups (SPEC §5).

Ranks are 1-based. A tie group of size m holding r relevant items, after s items of which c
are relevant, occupies ranks s+1..s+m, and for each rank p in it

    E[rel(p) N(p)] = (r/m) (c + 1 + (p - s - 1)(r - 1)/(m - 1)),

N(p) the relevant items in the first p. Summed with weight 1/p over the group this needs only
harmonic numbers: sum 1/p = H(s+m) - H(s), sum (p-s-1)/p = m - (s+1)(H(s+m) - H(s)). The
group straddling rank k contributes its first n = k - s ranks; the number J of its relevant
items there is hypergeometric(m, r, n), and given J = j the same formula holds with (j, n) in
place of (r, m). With R = c_k + J relevant items in the top k,

    E[AP@k] = sum_j P(J = j) (E[S_full] + E[S_straddle | J = j]) / (c_k + j),

zero where c_k + j = 0 (S_full, the groups wholly inside the top k, is independent of J).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def harmonic(n: int) -> np.ndarray:
    """H(0..n) as float64 ``(n + 1,)``."""
    return np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, n + 1))))


def _group_sum(m, r, s, c, h_lo_hi):
    """sum over a group's ranks of E[rel(p) N(p)] / p, vectorised (see module docstring)."""
    m = np.asarray(m, np.float64)
    r = np.asarray(r, np.float64)
    slope = np.where(m > 1, (r - 1) / np.maximum(m - 1, 1), 0.0)
    return np.where(
        m > 0,
        r / np.maximum(m, 1) * ((c + 1) * h_lo_hi + slope * (m - (s + 1) * h_lo_hi)),
        0.0,
    )


def _log_comb(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def straddle(m: int, r: int, s: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Values j of J and P(J = j) for the group straddling rank k (n = k - s of m ranks)."""
    n = k - s
    j = np.arange(max(0, n - (m - r)), min(r, n) + 1)
    logp = _log_comb(r, j) + _log_comb(m - r, n - j) - _log_comb(m, n)
    return j, np.exp(logp)


def expected_ap(m: np.ndarray, r: np.ndarray, k: int, h: np.ndarray) -> float:
    """E[AP@k] for one query from its per-distance group sizes ``m`` and relevant counts ``r``.

    ``m``, ``r``: int ``(D,)`` over distances 0..D-1 in increasing order, covering at least
    the first k items (``m.sum() >= k``); ``h``: :func:`harmonic` up to at least k.
    """
    m = np.asarray(m, np.int64)
    r = np.asarray(r, np.int64)
    before = np.concatenate(([0], np.cumsum(m)))
    rel_before = np.concatenate(([0], np.cumsum(r)))
    t = int(np.searchsorted(before[1:], k))  # first group whose end reaches rank k
    s_full, c_full = before[:t], rel_before[:t]
    full = _group_sum(m[:t], r[:t], s_full, c_full, h[before[1:t + 1]] - h[s_full]).sum()
    s, c, mt, rt = int(before[t]), int(rel_before[t]), int(m[t]), int(r[t])
    n = k - s
    j, p = straddle(mt, rt, s, k)
    strad = _group_sum(n, j, s, c, h[k] - h[s])
    denom = c + j
    terms = np.where(denom > 0, p * (full + strad) / np.maximum(denom, 1), 0.0)
    return float(terms.sum())


def expected_hits(m: np.ndarray, r: np.ndarray, k: int) -> float:
    """E[number of relevant items in the top k] (linearity: n r / m from the straddler)."""
    before = np.concatenate(([0], np.cumsum(m)))
    rel_before = np.concatenate(([0], np.cumsum(r)))
    t = int(np.searchsorted(before[1:], k))
    n = k - before[t]
    return float(rel_before[t] + n * r[t] / m[t])
