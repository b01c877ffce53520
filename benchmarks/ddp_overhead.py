"""Data-parallel overhead on this CPU: the trainer's step at world size 1 and 2 (gloo).

Same model, same global batch, one thread per process: world size 2 computes half the batch
per process, then averages the gradients (a tiny all-reduce of the loss and the stop flag,
then one bucketed all-reduce of the gradients). Printed:

* step time at world size 1 and 2 and the speed-up (2.0 would be perfect scaling);
* the learner's forward and backward alone, in one process and in each of two at once
  (what the two processes' competition for the cores costs, before any communication);
* the all-reduce alone (the gradients of the model, timed in the two processes);
* the overhead: world-2 step time over (world-1 step time / 2), 1.0 = none.

On a 2-core machine the two processes share the only two cores with everything else, so
the figures are upper bounds of the overhead; GPUs with NCCL see other numbers.

    python benchmarks/ddp_overhead.py            # ResNet-18 at 32 px, global batch 64
    python benchmarks/ddp_overhead.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from retrieval_bio import distributed
from retrieval_bio.datasets import TensorSplit
from retrieval_bio.losses import create_loss
from retrieval_bio.models import create_model
from retrieval_bio.train import Trainer


def _setup(args: argparse.Namespace, share: int):
    torch.manual_seed(0)
    model = create_model(args.backbone, "classify", num_classes=10, image_size=args.size)
    g = torch.Generator().manual_seed(1)
    n = args.batch
    data = TensorSplit(torch.rand(n, 3, args.size, args.size, generator=g),
                       torch.eye(10)[torch.randint(0, 10, (n,), generator=g)])
    trainer = Trainer(model, create_loss("cross-entropy", num_classes=10), data,
                      param_groups=[{"params": list(model.parameters()), "lr": 1e-3}],
                      epochs=1, batch_size=args.batch, seed=0, num_workers=0)
    r = distributed.rank()
    x, y = data.images[r * share:(r + 1) * share], data.labels[r * share:(r + 1) * share]
    return trainer, x, y


def _time(fn, rounds: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        distributed.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(1)
    world = distributed.world_size()
    trainer, x, y = _setup(args, args.batch // world)
    def compute() -> None:  # the learner's forward and backward alone, no reduction
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.learner.training_step(trainer.model, trainer.objective, x, y, trainer._ctx)

    out = {"step": _time(lambda: trainer._train_step(x, y), args.rounds),
           "compute": _time(compute, args.rounds)}
    if world > 1:
        params = trainer._params
        out["all_reduce"] = _time(lambda: distributed.average_gradients(params),
                                  args.rounds)
        out["values"] = sum(p.numel() for p in params)
    return out


def _rank(rank: int, init: str, args: argparse.Namespace, queue) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = _measure(args)
        if rank == 0:
            queue.put(result)
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.backbone = 5, "small-cnn"
    one = _measure(args)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(f"file://{tmp}/store", args, queue), nprocs=2)
    two = queue.get()
    print(f"{args.backbone} at {args.size} px, global batch {args.batch}, 1 thread per "
          f"process, median of {args.rounds} steps")
    print(f"  world size 1: {one['step'] * 1e3:8.1f} ms/step")
    print(f"  world size 2: {two['step'] * 1e3:8.1f} ms/step  (speed-up "
          f"{one['step'] / two['step']:.2f}x; 2.00 = perfect)")
    print(f"  forward + backward alone: {one['compute'] * 1e3:.1f} ms (batch {args.batch}, "
          f"one process), {two['compute'] * 1e3:.1f} ms (batch {args.batch // 2}, each of "
          f"two at once)")
    print(f"  all-reduce of {two['values'] / 1e6:.2f} M gradient values: "
          f"{two['all_reduce'] * 1e3:.1f} ms ({two['all_reduce'] / two['step']:.0%} of a "
          f"world-2 step)")
    print(f"  overhead: world-2 step / (world-1 step / 2) = "
          f"{two['step'] / (one['step'] / 2):.2f}  (1.00 = none)")


if __name__ == "__main__":
    main()
