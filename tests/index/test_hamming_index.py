"""HammingIndex against a brute-force (distance, id) oracle written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval_bio.index import (
    HammingIndex,
    gpu_available,
    pack_codes,
    split_ranges,
    unpack_codes,
)
from retrieval_bio.index._merge import merge_topk

BITS = 16


def codes(rng, n, bits=BITS):
    return np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)


def brute(q, db, k):
    """Oracle: distances by counting differing signs, stable argsort -> (distance, id)."""
    d = (q[:, None, :] != db[None, :, :]).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    pad = k - order.shape[1]
    if pad > 0:
        order = np.pad(order, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=-1)
    return dist, order


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return codes(rng, 2500), codes(rng, 30)


EXACT = [
    ("flat", {}),
    ("ivf", {"nlist": 8, "nprobe": 8}),
    ("flat", {"_max_k": 64}),  # the GPU shard-and-merge path, run on CPU shards of 64 codes
]


@pytest.mark.parametrize("kind,opts", EXACT, ids=["flat", "ivf-exhaustive", "sharded"])
@pytest.mark.parametrize("k", [1, 10, 200, 2600])
def test_exact_kinds_equal_brute_force(data, kind, opts, k):
    db, q = data  # 16 bits over 2500 codes: many ties at every k
    index = HammingIndex(BITS, kind, **opts).add(db)
    d, i = index.search(q, k)
    want_d, want_i = brute(q, db, k)
    assert d.dtype == np.int32 and i.dtype == np.int64 and d.shape == (len(q), k)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(i, want_i)


@pytest.mark.parametrize("kind,opts", [("hash", {"b": 8, "nflip": 1}),
                                       ("multihash", {"nhash": 2, "b": 8, "nflip": 1}),
                                       ("ivf", {"nlist": 8, "nprobe": 2})])
def test_approximate_kinds_return_a_correctly_ordered_subset(data, kind, opts):
    db, q = data
    index = HammingIndex(BITS, kind, **opts).add(db)
    d, i = index.search(q, 50)
    true_d = (q[:, None, :] != db[None, :, :]).sum(-1)
    found = 0
    for row in range(len(q)):
        ok = i[row] >= 0
        ids, dist = i[row][ok], d[row][ok]
        assert (d[row][~ok] == -1).all() and ok.tolist() == sorted(ok.tolist(), reverse=True)
        np.testing.assert_array_equal(dist, true_d[row, ids])  # correct distances
        rank = np.lexsort((np.arange(len(db)), true_d[row]))  # brute force's (distance, id)
        position = np.empty(len(db), int)
        position[rank] = np.arange(len(db))
        assert (np.diff(position[ids]) > 0).all()  # same order as brute force
        found += len(ids)
    assert found > 0


def test_range_search_inclusive_radius(data):
    db, q = data
    for kind, opts in [("flat", {}), ("ivf", {"nlist": 8, "nprobe": 8})]:
        index = HammingIndex(BITS, kind, **opts).add(db)
        lims, d, i = index.range_search(q, 3)
        assert lims.shape == (len(q) + 1,)
        true_d = (q[:, None, :] != db[None, :, :]).sum(-1)
        for row, (rd, ri) in enumerate(split_ranges(lims, d, i)):
            want = np.flatnonzero(true_d[row] <= 3)  # inclusive: distance 3 is kept
            want = want[np.lexsort((want, true_d[row, want]))]
            np.testing.assert_array_equal(ri, want)
            np.testing.assert_array_equal(rd, true_d[row, want])
        assert (d == 3).any()


def test_save_load_round_trip(tmp_path, data):
    db, q = data
    for kind, opts in [("flat", {}), ("ivf", {"nlist": 8, "nprobe": 8}), ("hash", {"nflip": 2})]:
        index = HammingIndex(BITS, kind, **opts).add(db)
        path = index.save(tmp_path / f"{kind}.faiss")
        loaded = HammingIndex.load(path)
        assert (loaded.kind, loaded.bits, len(loaded)) == (kind, BITS, len(db))
        assert loaded.options == index.options
        for a, b in zip(index.search(q, 40), loaded.search(q, 40), strict=True):
            np.testing.assert_array_equal(a, b)


def test_packed_and_pm1_inputs_agree(data):
    db, q = data
    a = HammingIndex(BITS).add(db)
    b = HammingIndex(BITS).add(pack_codes(db))
    c = HammingIndex(BITS).add(torch.from_numpy(db).float())
    for other in (b, c):
        for x, y in zip(a.search(q, 25), other.search(pack_codes(q), 25), strict=True):
            np.testing.assert_array_equal(x, y)
    # pack/unpack round trip and the bit convention (bit 1 <=> +1, first code bit is the MSB)
    np.testing.assert_array_equal(unpack_codes(pack_codes(db), BITS), db)
    assert pack_codes(np.array([[1, -1, -1, -1, -1, -1, -1, 1]]))[0, 0] == 0b10000001


def test_fewer_results_than_k_are_padded():
    rng = np.random.default_rng(1)
    db, q = codes(rng, 5), codes(rng, 2)
    d, i = HammingIndex(BITS).add(db).search(q, 8)
    assert (i[:, 5:] == -1).all() and (d[:, 5:] == -1).all()
    np.testing.assert_array_equal(i[:, :5], brute(q, db, 5)[1])
    d, i = HammingIndex(BITS).search(q, 3)  # empty index
    assert (i == -1).all()


def test_bad_inputs_name_the_problem(data):
    db, _ = data
    index = HammingIndex(BITS)
    with pytest.raises(ValueError, match="expected 16"):
        index.add(db[:, :8])
    with pytest.raises(ValueError, match="bytes per code"):
        index.add(np.zeros((3, 16), np.uint8))  # uint8 is read as packed: 16 bytes != 2
    with pytest.raises(ValueError, match="dtype"):
        index.add(db.astype(bool))
    with pytest.raises(ValueError, match="-1 and \\+1"):
        index.add((db > 0).astype(np.int8))
    with pytest.raises(ValueError, match="multiple of 8"):
        HammingIndex(12)
    with pytest.raises(ValueError, match="unknown option"):
        HammingIndex(BITS, "flat", nprobe=3)
    with pytest.raises(KeyError, match="index kind"):
        HammingIndex(BITS, "lsh")
    with pytest.raises(ValueError, match="k must be"):
        index.add(db).search(db[:2], 0)


def test_merge_topk_orders_by_distance_then_id():
    d_a = np.array([[1, 3, -1]], np.int32)
    i_a = np.array([[7, 2, -1]])
    d_b = np.array([[1, 2]], np.int32)
    i_b = np.array([[4, 9]])
    d, i = merge_topk(d_a, i_a, d_b, i_b, 5)
    assert d.tolist() == [[1, 1, 2, 3, -1]] and i.tolist() == [[4, 7, 9, 2, -1]]


@pytest.mark.skipif(gpu_available(), reason="checks the error raised without CUDA FAISS")
def test_cuda_request_without_gpu_faiss_is_an_error():
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        HammingIndex(BITS, device="cuda")
    assert HammingIndex(BITS, device="auto").device == "cpu"
