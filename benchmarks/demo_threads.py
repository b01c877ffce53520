"""Time the demo at its fixed thread count (2: the same numbers on every machine) against
the same demo on one thread, in one process, and print the ratio.

    python benchmarks/demo_threads.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from retrieval_bio.demo import DemoSettings, run_demo


def timed(threads: int | None) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run_demo(out, DemoSettings(device="cpu", threads=threads))
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    fixed = DemoSettings().threads
    one, many = [], []
    for _ in range(args.repeat):  # interleaved, so drifting machine load hits both
        one.append(timed(1))
        many.append(timed(fixed))
    print(f"machine: {torch.get_num_threads()} threads available to torch")
    print(f"demo, 1 thread:            {min(one):6.1f} s (best of {args.repeat})")
    print(f"demo, {fixed} threads (default): {min(many):6.1f} s")
    print(f"ratio (default / 1 thread): {min(many) / min(one):.2f}x")


if __name__ == "__main__":
    main()
