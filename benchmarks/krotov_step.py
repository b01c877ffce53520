"""Time one Krotov–Hopfield step (``retrieval_bio.learners.krotov.krotov_increment`` plus the
max-normalisation) against the reference: Krotov's notebook ([K], DimaKrotov/
Biological_Learning) written in numpy, which ranks every unit with a full ``argsort`` per
sample and builds the (K, B) indicator matrix densely. Both give the same ΔW (the test
``tests/learners/test_krotov.py`` checks the step to 1e-12 against a hand loop); this
prints the time of each and the ratio per size, in one process.

    python benchmarks/krotov_step.py            # digits (N 64, K 100, B 50), MNIST-like, CIFAR-10
    python benchmarks/krotov_step.py --quick    # the first two sizes
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from conv_spectra import timed  # the same median-of-rounds timer

from retrieval_bio.learners.krotov import krotov_increment

SIZES = {"digits": (64, 100, 50), "mnist": (784, 2000, 100), "cifar10": (3072, 2000, 1000)}


def reference_step(w: np.ndarray, v: np.ndarray, p: float, k: int, delta: float) -> np.ndarray:
    """[K]'s update, ``W`` (K, N) and inputs (B, N), max-normalised."""
    hid, num = w.shape[0], v.shape[0]
    tot_input = (np.sign(w) * np.abs(w) ** (p - 1)) @ v.T  # (K, B)
    y = np.argsort(tot_input, axis=0)
    yl = np.zeros((hid, num))
    yl[y[hid - 1, :], np.arange(num)] = 1.0
    yl[y[hid - k], np.arange(num)] = -delta
    xx = np.sum(yl * tot_input, 1)
    ds = yl @ v - xx[:, None] * w
    return ds / max(np.abs(ds).max(), 1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(SIZES)[:2] if args.quick else list(SIZES)
    print(f"Krotov–Hopfield step, p = 3, k = 2, Δ = 0.4, float32, {args.threads} thread(s)")
    print(f"{'size':>8} {'N':>5} {'K':>5} {'B':>5} {'reference ms':>13} {'toolkit ms':>11} "
          f"{'ratio':>6}")
    rng = np.random.default_rng(0)
    for name in names:
        n, k_units, b = SIZES[name]
        w = rng.standard_normal((k_units, n)).astype(np.float32)
        v = rng.random((b, n)).astype(np.float32)
        v /= (v ** 3).sum(1, keepdims=True) ** (1 / 3)
        wt, vt = torch.from_numpy(w), torch.from_numpy(v)

        def ours(wt: torch.Tensor = wt, vt: torch.Tensor = vt) -> torch.Tensor:
            ds = krotov_increment(wt, vt, p=3.0, k=2, delta=0.4)
            return ds / ds.abs().max().clamp_min(1e-30)

        ref = reference_step(w, v, 3.0, 2, 0.4)
        got = ours().numpy()
        err = float(np.abs(ref - got).max())
        rounds = 3 if name == "cifar10" else 10
        t_ref = timed(lambda w=w, v=v: reference_step(w, v, 3.0, 2, 0.4), rounds)
        t_ours = timed(ours, rounds)
        print(f"{name:>8} {n:>5} {k_units:>5} {b:>5} {1e3 * t_ref:>13.2f} "
              f"{1e3 * t_ours:>11.2f} {t_ref / t_ours:>6.1f}x   (max |ΔW| difference "
              f"{err:.1e})")


if __name__ == "__main__":
    main()
