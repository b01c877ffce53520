"""Time one training step (forward, backward, Adam step) of each learning rule against BP.

Issue 3 targets: every rule <= 1.02x BP on ResNet-18 (64 px, batch 32), <= 1.05x on VGG-16
(64 px, batch 16), <= 1.10x on AlexNet (128 px, batch 32). All variants of one backbone
live in one process and are interleaved (the order rotates every round), so machine noise
hits them alike. Two ratios are printed: median(rule) / median(BP), and the median over
rounds of the per-round ratio rule / BP (the more noise-robust one).

    python benchmarks/rules_overhead.py            # full run (several minutes on CPU)
    python benchmarks/rules_overhead.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn

from retrieval_bio import rules
from retrieval_bio.models import create_model

CONFIGS = {  # backbone: (image size, batch size, target ratio)
    "resnet18": (64, 32, 1.02),
    "vgg16": (64, 16, 1.05),
    "alexnet": (128, 32, 1.10),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, rounds: int, warmup: int, device: torch.device,
          rule_names: list[str], clock=time.perf_counter) -> dict[str, tuple[float, float, float]]:
    size, batch, _ = CONFIGS[name]
    torch.manual_seed(0)
    base = create_model(name, "classify", num_classes=10).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    variants = {}
    for rule in rule_names:
        model = rules.convert(copy.deepcopy(base), rule, seed=0).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=5e-4)
        rules.attach(opt, model)
        variants[rule] = (model, opt)
    del base

    def step(rule: str) -> float:
        model, opt = variants[rule]
        _sync(device)
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        _sync(device)
        return clock() - t0

    for _ in range(warmup):
        for rule in rule_names:
            step(rule)
    times: dict[str, list[float]] = {r: [] for r in rule_names}
    for i in range(rounds):
        order = rule_names[i % len(rule_names):] + rule_names[:i % len(rule_names)]
        for rule in order:
            times[rule].append(step(rule))
    bp = times["bp"]
    out = {}
    for rule in rule_names:
        med = statistics.median(times[rule])
        paired = statistics.median(t / b for t, b in zip(times[rule], bp, strict=True))
        out[rule] = (med, med / statistics.median(bp), paired)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--rules", nargs="+", default=list(rules.RULES), choices=list(rules.RULES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this process's CPU time (less sensitive to other load on a "
                        "shared machine; use with --threads 1, CPU device only)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rounds = args.rounds or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    rule_names = ["bp"] + [r for r in args.rules if r != "bp"]
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} "
          f"rounds={rounds} warmup={warmup} torch={torch.__version__}")
    for name in args.models:
        size, batch, target = CONFIGS[name]
        res = bench(name, rounds, warmup, device, rule_names, clock)
        print(f"\n{name} ({size} px, batch {batch}); target <= {target:.2f}x BP")
        print(f"  {'rule':6s} {'median s':>9s} {'ratio':>7s} {'paired':>7s}")
        for rule, (med, ratio, paired) in res.items():
            flag = "" if rule == "bp" or paired <= target else "  (over target)"
            print(f"  {rule:6s} {med:9.4f} {ratio:7.3f} {paired:7.3f}{flag}", flush=True)


if __name__ == "__main__":
    main()
