"""Metrics against brute-force oracles written here (loops over python/numpy, stable sorts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval_bio.eval import (
    hamming_distances,
    map_at_k,
    pr_curve,
    precision_at_k,
    precision_within_radius,
    recall_at_k,
)
from retrieval_bio.eval._ranking import candidates


def random_case(rng, n_q=12, n_db=300, bits=8, classes=5, p_label=0.3):
    q = np.where(rng.random((n_q, bits)) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((n_db, bits)) < 0.5, -1, 1).astype(np.int8)
    ql = (rng.random((n_q, classes)) < p_label).astype(np.float32)
    dl = (rng.random((n_db, classes)) < p_label).astype(np.float32)
    return q, db, ql, dl


def oracle_dist(q, db):
    return np.array([[int(np.sum(a != b)) for b in db] for a in q])


def oracle_rel(ql, dl):
    return np.array([[bool(np.any((a > 0) & (b > 0))) for b in dl] for a in ql])


def oracle_ap(dist_row, rel_row, k):
    order = np.argsort(dist_row, kind="stable")
    k = len(order) if k <= 0 or k > len(order) else k
    hits, total = 0, 0.0
    for rank, idx in enumerate(order[:k], start=1):
        if rel_row[idx]:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


@pytest.mark.parametrize("k", [-1, 0, 1, 7, 50, 299, 300, 301, 10_000])
def test_map_index_ties_matches_stable_argsort_oracle(k):
    rng = np.random.default_rng(k % 97)
    q, db, ql, dl = random_case(rng)  # 8 bits over 300 codes: heavy ties
    d, rel = oracle_dist(q, db), oracle_rel(ql, dl)
    want = np.array([oracle_ap(d[i], rel[i], k) for i in range(len(q))])
    got = map_at_k(q, db, ql, dl, k, per_query=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert map_at_k(q, db, ql, dl, k) == pytest.approx(want.mean(), abs=1e-12)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_map_more_bits_than_a_word_many_blocks_and_threads(monkeypatch, threads):
    monkeypatch.setenv("RETRIEVAL_BIO_THREADS", threads)
    rng = np.random.default_rng(1)
    q, db, ql, dl = random_case(rng, n_q=50, n_db=500, bits=72, classes=70, p_label=0.05)
    d, rel = oracle_dist(q, db), oracle_rel(ql, dl)
    for k in (20, 400):
        want = np.array([oracle_ap(d[i], rel[i], k) for i in range(len(q))])
        np.testing.assert_allclose(map_at_k(q, db, ql, dl, k, per_query=True), want, atol=1e-12)
    got = map_at_k(q, db, ql, dl, 30, ties="expected", per_query=True)
    monkeypatch.setenv("RETRIEVAL_BIO_THREADS", "1")
    np.testing.assert_array_equal(got, map_at_k(q, db, ql, dl, 30, ties="expected",
                                                per_query=True))


def test_codes_longer_than_255_bits_use_wider_distances():
    rng = np.random.default_rng(10)
    q, db, ql, dl = random_case(rng, n_q=5, n_db=80, bits=264)
    d, rel = oracle_dist(q, db), oracle_rel(ql, dl)
    np.testing.assert_array_equal(hamming_distances(q, db), d)
    want = np.array([oracle_ap(d[i], rel[i], 30) for i in range(len(q))])
    np.testing.assert_allclose(map_at_k(q, db, ql, dl, 30, per_query=True), want, atol=1e-12)


def test_threshold_guess_short_rows_are_redone():
    # Even database positions (the subsample) sit on the query's code, odd ones are random:
    # the guessed threshold keeps too few codes for large k, and those rows must be redone.
    rng = np.random.default_rng(2)
    a = np.where(rng.random(16) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((4096, 16)) < 0.5, -1, 1).astype(np.int8)
    db[::2] = a
    q = np.stack([a] * 3 + [np.where(rng.random(16) < 0.5, -1, 1)] * 3).astype(np.int8)
    ql = rng.integers(0, 3, len(q))
    dl = rng.integers(0, 3, len(db))
    d = oracle_dist(q, db)
    rel = ql[:, None] == dl[None, :]
    for k in (5, 1500, 3000):
        want = np.array([oracle_ap(d[i], rel[i], k) for i in range(len(q))])
        np.testing.assert_allclose(map_at_k(q, db, ql, dl, k, per_query=True), want, atol=1e-12)


def test_candidates_recover_from_a_misleading_sample():
    rng = np.random.default_rng(9)
    dist = rng.integers(0, 9, (4, 500)).astype(np.uint8)
    misleading = np.zeros((4, 64), np.uint8)  # says every code is at distance 0
    c = candidates(dist, 100, misleading, bits=8)
    assert (c.count >= 100).all()
    for row in range(4):
        kth = np.sort(dist[row])[99]
        np.testing.assert_array_equal(c.col[c.row == row], np.flatnonzero(dist[row] <= kth))


def test_zero_relevance_query_counts_zero_in_mean():
    db = np.array([[1, 1], [1, -1], [-1, -1]], np.int8)
    q = np.array([[1, 1], [1, 1]], np.int8)
    dl = np.array([[1, 0], [1, 0], [1, 0]])
    ql = np.array([[1, 0], [0, 1]])  # second query shares no label with anything
    assert map_at_k(q, db, ql, dl, k=2, per_query=True).tolist() == [1.0, 0.0]
    assert map_at_k(q, db, ql, dl, k=2) == 0.5


def test_torch_codes_and_class_id_labels_equal_numpy_multi_hot():
    rng = np.random.default_rng(3)
    q, db, _, _ = random_case(rng)
    ql, dl = rng.integers(0, 4, len(q)), rng.integers(0, 4, len(db))
    a = map_at_k(torch.from_numpy(q).float(), torch.from_numpy(db), ql, dl, 40)
    b = map_at_k(q, db, np.eye(4)[ql], np.eye(4)[dl], 40)
    assert a == b


def test_bad_inputs_name_the_problem():
    rng = np.random.default_rng(4)
    q, db, ql, dl = random_case(rng)
    with pytest.raises(ValueError, match="-1 and \\+1"):
        map_at_k((q > 0).astype(np.int8), db, ql, dl, 5)
    with pytest.raises(ValueError, match="bits"):
        map_at_k(q[:, :4], db, ql, dl, 5)
    with pytest.raises(ValueError, match="db_labels"):
        map_at_k(q, db, ql, dl[:-1], 5)
    with pytest.raises(ValueError, match="ties"):
        map_at_k(q, db, ql, dl, 5, ties="random")


# ----------------------------------------------------------------------------- ties="expected"


def test_expected_hand_worked_tiny_case():
    # All 3 database codes tie at distance 0; relevance (1, 0, 1); k = 2.
    # Orders (6 equally likely) -> top-2 relevance and AP@2:
    #  (R,R):2 orders -> AP 1; (R,N):2 -> AP 1; (N,R):2 -> AP 1/2. E = (2+2+1)/6 = 5/6.
    db = np.ones((3, 8), np.int8)
    q = np.ones((1, 8), np.int8)
    dl = np.array([0, 1, 0])
    ql = np.array([0])
    assert map_at_k(q, db, ql, dl, 2, ties="expected") == pytest.approx(5 / 6, abs=1e-12)
    # ties="index" takes positions 0, 1: (R, N) -> AP 1.
    assert map_at_k(q, db, ql, dl, 2, ties="index") == 1.0
    assert precision_at_k(q, db, ql, dl, 2, ties="expected") == pytest.approx(2 / 3)


def test_expected_matches_monte_carlo_over_tie_orders():
    rng = np.random.default_rng(5)
    q, db, ql, dl = random_case(rng, n_q=6, n_db=120, bits=6, classes=4, p_label=0.3)
    d, rel = oracle_dist(q, db), oracle_rel(ql, dl)
    for k in (10, 45, 0):
        exact = map_at_k(q, db, ql, dl, k, ties="expected", per_query=True)
        exact_p = precision_at_k(q, db, ql, dl, k, ties="expected", per_query=True)
        n_samples = 4000
        kk = len(db) if k <= 0 else k
        for i in range(len(q)):
            # Random order within ties: sort by distance plus a uniform jitter below 1.
            keys = d[i][None, :] + rng.random((n_samples, len(db)))
            order = np.argsort(keys, axis=1)[:, :kk]
            r = rel[i][order].astype(float)
            cum = np.cumsum(r, axis=1)
            hits = cum[:, -1]
            aps = np.where(hits > 0, (cum * r / np.arange(1, kk + 1)).sum(1) / np.maximum(hits, 1),
                           0.0)
            precs = hits / kk
            se = max(aps.std(ddof=1) / np.sqrt(n_samples), 1e-12)
            assert abs(aps.mean() - exact[i]) < 4 * se + 1e-12, (k, i, aps.mean(), exact[i], se)
            se_p = max(precs.std(ddof=1) / np.sqrt(n_samples), 1e-12)
            assert abs(precs.mean() - exact_p[i]) < 4 * se_p + 1e-12


def test_expected_equals_index_when_no_ties():
    # 8-bit codes, all distinct -> distances still tie; use a database of distinct distances.
    db = np.array([[1] * (8 - j) + [-1] * j for j in range(9)], np.int8)[:, :8]
    q = np.ones((1, 8), np.int8)
    dl = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1])
    ql = np.array([1])
    for k in (1, 4, 9):
        assert map_at_k(q, db, ql, dl, k, ties="expected") == pytest.approx(
            map_at_k(q, db, ql, dl, k, ties="index"), abs=1e-12)


# ----------------------------------------------------------------------------- other metrics


@pytest.mark.parametrize("ties", ["index", "expected"])
def test_precision_recall_at_k_vs_brute_force(ties):
    rng = np.random.default_rng(6)
    q, db, ql, dl = random_case(rng, bits=16)  # 16 bits over 300: few ties at small k
    d, rel = oracle_dist(q, db), oracle_rel(ql, dl)
    for k in (5, 60, -1):
        kk = len(db) if k <= 0 else k
        top = [np.argsort(d[i], kind="stable")[:kk] for i in range(len(q))]
        hits = np.array([rel[i][top[i]].sum() for i in range(len(q))])
        total = rel.sum(axis=1)
        p = precision_at_k(q, db, ql, dl, k, ties=ties, per_query=True)
        r = recall_at_k(q, db, ql, dl, k, ties=ties, per_query=True)
        if ties == "index" or k <= 0:
            np.testing.assert_allclose(p, hits / kk, atol=1e-12)
            np.testing.assert_allclose(r, np.where(total > 0, hits / np.maximum(total, 1), 0),
                                       atol=1e-12)
        else:  # expected: within the range spanned by the sure part and the tie group
            kth = np.array([d[i][top[i][-1]] for i in range(len(q))])
            sure = np.array([rel[i][d[i] < kth[i]].sum() for i in range(len(q))])
            group = np.array([(d[i] == kth[i]).sum() for i in range(len(q))])
            grel = np.array([rel[i][d[i] == kth[i]].sum() for i in range(len(q))])
            n = kk - (d < kth[:, None]).sum(axis=1)
            np.testing.assert_allclose(p, (sure + n * grel / group) / kk, atol=1e-12)


def test_pr_curve_and_precision_within_radius_vs_brute_force():
    rng = np.random.default_rng(7)
    q, db, ql, dl = random_case(rng, n_q=20, bits=8)
    q[0] = -q[0]  # nothing changes structurally; keep a query likely far from some codes
    d, rel = oracle_dist(q, db), oracle_rel(ql, dl)
    curve = pr_curve(q, db, ql, dl, per_query=True)
    assert curve.radius.tolist() == list(range(9))
    for i in range(len(q)):
        for r in range(9):
            inside = d[i] <= r
            want_p = rel[i][inside].mean() if inside.any() else 0.0
            want_r = rel[i][inside].sum() / rel[i].sum() if rel[i].any() else 0.0
            assert curve.precision[i, r] == pytest.approx(want_p, abs=1e-12)
            assert curve.recall[i, r] == pytest.approx(want_r, abs=1e-12)
    mean_curve = pr_curve(q, db, ql, dl)
    np.testing.assert_allclose(mean_curve.precision, curve.precision.mean(axis=0))
    p2 = precision_within_radius(q, db, ql, dl, per_query=True)
    np.testing.assert_allclose(p2, curve.precision[:, 2])
    assert precision_within_radius(q, db, ql, dl, radius=100) == pytest.approx(
        curve.precision[:, 8].mean())


def test_precision_within_radius_empty_ball_counts_zero():
    db = np.ones((4, 8), np.int8)
    q = np.stack([np.ones(8), -np.ones(8)]).astype(np.int8)  # second query is 8 bits away
    labels = np.zeros(4, int)
    assert precision_within_radius(q, db, [0, 0], labels, per_query=True).tolist() == [1.0, 0.0]


def test_hamming_distances_vs_dot_product_formula():
    rng = np.random.default_rng(8)
    q, db, _, _ = random_case(rng, bits=40)
    want = (40 - q.astype(int) @ db.astype(int).T) // 2
    np.testing.assert_array_equal(hamming_distances(q, db), want)
