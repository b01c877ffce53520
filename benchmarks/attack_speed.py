"""Time one attack step against one forward + backward of the same batch (issue 6 target:
ratio <= 1.2).

For HAG, SDHA (against N_train random training codes, default 5,000) and PGD on small-cnn
(32 px, batch 32) and ResNet-18 (64 px, batch 32), the per-step time is the slope between
runs of ``--short`` and ``--long`` steps, so the once-per-call work (clean codes, relevance
mask) is not counted. The baseline is the minimal gradient call an attack needs: a forward
and ``torch.autograd.grad`` of the output sum w.r.t. the input (``fwd+bwd(x)``); a second
ratio uses a training-style forward + ``backward()`` that also computes every weight
gradient (``fwd+bwd(all)``). All timings of one backbone are interleaved over rounds and the
median is taken. ``--grad exact`` times the attacks on an frSF-converted model through W.

    python benchmarks/attack_speed.py [--quick] [--device cuda] [--grad model|exact] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from retrieval_bio import rules
from retrieval_bio.attacks import HAG, PGD, SDHA
from retrieval_bio.models import create_model

CONFIGS = {"small-cnn": (32, 32), "resnet18": (64, 32)}  # backbone: (image size, batch)
TARGET = 1.2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--grad", default="model", choices=["model", "exact"])
    ap.add_argument("--train-codes", type=int, default=5000)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--backbones", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = 3 if args.quick else 7
    short, long = (2, 6) if args.quick else (3, 13)
    g = torch.Generator().manual_seed(0)

    print(f"device={device} threads={torch.get_num_threads()} grad={args.grad} "
          f"train codes={args.train_codes} steps {short}->{long}, {rounds} rounds")
    print(f"{'backbone':10} {'attack':6} {'step ms':>8} {'fwd+bwd(x) ms':>14} "
          f"{'ratio':>6} {'fwd+bwd(all) ms':>16} {'ratio':>6}")
    for name in args.backbones.split(","):
        bench(name, args, device, rounds, short, long, g)


def bench(
    name: str, args: argparse.Namespace, device: torch.device, rounds: int, short: int,
    long: int, g: torch.Generator,
) -> None:
    """Time HAG, SDHA and PGD steps on backbone ``name`` and print one line per attack."""
    size, batch = CONFIGS[name]
    torch.manual_seed(0)
    hash_model = create_model(name, "hash", bits=args.bits).to(device).eval()
    cls_model = create_model(name, "classify", num_classes=10).to(device).eval()
    if args.grad == "exact":  # time the exact path through a converted model
        hash_model = rules.convert(copy.deepcopy(hash_model), "frsf", seed=0)
        cls_model = rules.convert(copy.deepcopy(cls_model), "frsf", seed=0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    labels = torch.eye(10)[torch.randint(0, 10, (batch,), generator=g)].to(device)
    train_codes = (torch.randint(0, 2, (args.train_codes, args.bits), generator=g) * 2 - 1)
    train_labels = torch.eye(10)[torch.randint(0, 10, (args.train_codes,), generator=g)]
    train_codes, train_labels = train_codes.to(device), train_labels.to(device)

    def grad_x(model=hash_model):
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xr).sum(), xr)

    def full_backward(model=hash_model):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    def hag(steps):
        return lambda: HAG(hash_model, 0.03, steps, grad=args.grad)(x)

    def sdha(steps):
        return lambda: SDHA(hash_model, 0.03, steps, train_codes, train_labels,
                            grad=args.grad)(x, labels)

    def pgd(steps):
        return lambda: PGD(cls_model, 0.03, steps=steps, grad=args.grad)(x, labels)

    jobs = {"fwd+bwd(x)": grad_x, "fwd+bwd(all)": full_backward,
            "pgd fwd+bwd(x)": lambda: grad_x(cls_model),
            "pgd fwd+bwd(all)": lambda: full_backward(cls_model)}
    for attack, make in (("hag", hag), ("sdha", sdha), ("pgd", pgd)):
        jobs[f"{attack} short"] = make(short)
        jobs[f"{attack} long"] = make(long)
    for fn in jobs.values():  # warm up
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(rounds):
        keys = list(jobs)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate the order
        for k in keys:
            times[k].append(timed(jobs[k], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    for attack in ("hag", "sdha", "pgd"):
        step = (med[f"{attack} long"] - med[f"{attack} short"]) / (long - short)
        base = med["pgd fwd+bwd(x)"] if attack == "pgd" else med["fwd+bwd(x)"]
        full = med["pgd fwd+bwd(all)"] if attack == "pgd" else med["fwd+bwd(all)"]
        flag = "" if step / base <= TARGET else "  (above target)"
        print(f"{name:10} {attack:6} {1e3 * step:8.2f} {1e3 * base:14.2f} "
              f"{step / base:6.2f} {1e3 * full:16.2f} {step / full:6.2f}{flag}")


if __name__ == "__main__":
    main()
