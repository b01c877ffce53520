"""Time the FFT singular values of a conv (Sedghi et al. 2019; ``retrieval-bio diagnose``)
against the reference: the SVD of the conv's dense matrix on the whole image, built by
applying the circular conv to every basis image. Both give the same values (the test
``tests/eval/test_layerwise.py`` checks them to 1e-10); this prints the time of each and the
ratio, per size, in one process.

    python benchmarks/conv_spectra.py            # c_in = c_out = 16, H = W = 8, 12, 16
    python benchmarks/conv_spectra.py --quick    # 8 and 12 only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from retrieval_bio.eval.layerwise import conv_singular_values


def dense_singular_values(weight: torch.Tensor, size: int) -> torch.Tensor:
    """The reference: the circular conv's matrix, column by column, then its SVD."""
    c_in, k = weight.shape[1], weight.shape[-1]
    eye = torch.eye(c_in * size * size, dtype=weight.dtype).view(-1, c_in, size, size)
    padded = F.pad(eye, (k // 2,) * 4, mode="circular")
    matrix = F.conv2d(padded, weight).flatten(1).T
    return torch.linalg.svdvals(matrix)


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--channels", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = (8, 12) if args.quick else (8, 12, 16)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.channels, args.channels, 3, 3, generator=g, dtype=torch.float64)
    print(f"conv {args.channels}->{args.channels}, 3x3, float64, 1 thread")
    for size in sizes:
        fft = timed(lambda s=size: conv_singular_values(w, s), 5)
        dense = timed(lambda s=size: dense_singular_values(w, s), 1 if size > 12 else 3)
        a = conv_singular_values(w, size)
        b = dense_singular_values(w, size)
        err = float((a - b).abs().max())
        print(f"H=W={size:3d}: fft {fft * 1e3:9.2f} ms  dense {dense * 1e3:10.1f} ms  "
              f"speed-up {dense / fft:8.1f}x  max |difference| {err:.1e}")


if __name__ == "__main__":
    main()
