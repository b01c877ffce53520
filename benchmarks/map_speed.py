"""Time ``retrieval_bio.eval.map_at_k`` against a straightforward numpy reference.

Setting of issue 4: 1,000 queries x 59,000 database codes x 32 bits, k = 5000, random codes,
labels multi-hot over 21 classes (NUS-WIDE-like) and single-label over 10 (CIFAR-10-like).
The reference ranks each query with a stable argsort of its distances and must give the same
mAP (to 1e-9). Target: >= 20x faster.

    python benchmarks/map_speed.py [--queries 1000] [--db 59000] [--bits 32] [--k 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from retrieval_bio.eval import map_at_k


def reference_map(q, db, ql, dl, k):
    """Stable argsort per query; relevance = shared label; AP@k as in SPEC §5."""
    bits = q.shape[1]
    dist = (bits - q.astype(np.float32) @ db.astype(np.float32).T) / 2
    ranks = np.arange(1, k + 1)
    aps = np.zeros(len(q))
    for i in range(len(q)):
        order = np.argsort(dist[i], kind="stable")[:k]
        rel = (dl[order] @ ql[i]) > 0
        hits = rel.sum()
        if hits:
            aps[i] = (np.cumsum(rel)[rel] / ranks[rel]).sum() / hits
    return aps.mean()


def make(rng, n_q, n_db, bits, multi_label):
    q = np.where(rng.random((n_q, bits)) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((n_db, bits)) < 0.5, -1, 1).astype(np.int8)
    if multi_label:
        ql = (rng.random((n_q, 21)) < 0.1).astype(np.float32)
        dl = (rng.random((n_db, 21)) < 0.1).astype(np.float32)
    else:
        ql = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_q)]
        dl = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n_db)]
    return q, db, ql, dl


def best_of(repeat, fn, *args, **kwargs):
    """Fastest of ``repeat`` runs: (wall seconds, CPU seconds of this process, value)."""
    best, value = None, None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args, **kwargs)
        run = (time.perf_counter() - wall, time.process_time() - cpu)
        best = run if best is None or run[0] < best[0] else best
    assert best is not None
    return best[0], best[1], value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--db", type=int, default=59000)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for name, multi in [("multi-hot, 21 classes", True), ("single-label, 10 classes", False)]:
        data = make(rng, args.queries, args.db, args.bits, multi)
        ref_wall, ref_cpu, want = best_of(1, reference_map, *data, args.k)
        wall, cpu, got = best_of(args.repeat, map_at_k, *data, args.k)
        exp_wall, _, _ = best_of(1, map_at_k, *data, args.k, ties="expected")
        assert abs(got - want) < 1e-9, (got, want)
        print(f"{name}: mAP@{args.k} = {got:.9f} (reference {want:.9f})")
        print(f"  numpy reference  wall {ref_wall:7.3f} s  cpu {ref_cpu:7.3f} s")
        print(f"  map_at_k         wall {wall:7.3f} s  cpu {cpu:7.3f} s   "
              f"speed-up {ref_wall / wall:5.1f}x wall, {ref_cpu / cpu:5.1f}x cpu")
        print(f"  ties='expected'  wall {exp_wall:7.3f} s")


if __name__ == "__main__":
    main()
