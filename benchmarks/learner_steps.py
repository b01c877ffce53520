"""Step time of the learners, measured against their references in one process.

1. PEPITA ÷ BP on seed 000's MLP (784 -> 1024 -> 10, dropout 0.1, SGD momentum 0.9, batch 64),
   both through the toolkit's trainer step (`Trainer._train_step`). PEPITA makes two forward
   passes and no backward; BP a forward and a backward. Issue 11 expects <= 1.0, but the
   flops say otherwise: both compute one (64 x 784) @ (784 x 1024) forward product and one
   weight-update product of the same size (BP's dW1 = δ1ᵀx, PEPITA's ΔW1 = (h1 − h1')ᵀx'),
   and PEPITA's second pass adds W1·F (1024 x 784 x 10) on top (its first layer is taken as
   a1 + e (W1 F)ᵀ instead of a second 784 x 1024 product). Measured on 2 CPU cores: ~1.1.
2. The new trainer step (learner indirection, per-step context) ÷ the step as it was before
   learners existed (an inline copy: zero_grad, autocast forward, objective, scaled backward,
   scaler step, hooks), for BP and frSF on the rules benchmark's ResNet-18 (64 px, batch 32,
   Adam). Issue 11 expects <= 1.01.

Variants are interleaved (the order rotates every round) so machine noise hits them alike;
the printed ratio is the median over rounds of the per-round ratio.

    python benchmarks/learner_steps.py            # full run (a few minutes on a CPU)
    python benchmarks/learner_steps.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from retrieval_bio import rules
from retrieval_bio.datasets import TensorSplit
from retrieval_bio.learners import Pepita
from retrieval_bio.losses import create_loss
from retrieval_bio.models import create_model
from retrieval_bio.train import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(steps: dict, rounds: int, warmup: int, device: torch.device) -> dict:
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for n in names[i % len(names):] + names[:i % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            steps[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def _batch(n: int, size: int, device: torch.device):
    """A seeded batch of n random (3, size, size) images with 10-class one-hot labels, on
    ``device``, and the same as a dataset."""
    torch.manual_seed(0)
    x = torch.rand(n, 3, size, size, device=device)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (n,)), 10).float().to(device)
    return x, y, TensorSplit(x.cpu(), y.cpu())


def _trainer(model, loss, data, lr, learner=None, sgd=True):
    groups = [{"params": list(model.parameters()), "lr": lr}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9) if sgd else None
    return Trainer(model, loss, data, param_groups=groups, optimizer=opt, epochs=1,
                   batch_size=len(data), device=model.head.weight.device, learner=learner)


def pepita_vs_bp(rounds: int, warmup: int, device: torch.device) -> None:
    x, y, data = _batch(64, 28, device)
    loss = create_loss("mse-softmax", num_classes=10)
    base = create_model("mlp", "classify", num_classes=10, image_size=28, grey=True).to(device)
    pep = _trainer(copy.deepcopy(base).train(), loss, data, 0.01, Pepita(seed=0))
    bp = _trainer(copy.deepcopy(base).train(), loss, data, 0.01)
    times = interleaved({"pepita": lambda: pep._train_step(x, y),
                         "bp": lambda: bp._train_step(x, y)}, rounds, warmup, device)
    ratio = statistics.median(a / b for a, b in zip(times["pepita"], times["bp"], strict=True))
    print(f"mlp 784-1024-10, batch 64: PEPITA {statistics.median(times['pepita']) * 1e3:.3f} ms"
          f", BP {statistics.median(times['bp']) * 1e3:.3f} ms per step; PEPITA / BP = "
          f"{ratio:.3f} (target <= 1.0)")


def trainer_overhead(rounds: int, warmup: int, device: torch.device) -> None:
    x, y, data = _batch(32, 64, device)
    loss = create_loss("cross-entropy", num_classes=10)
    base = create_model("resnet18", "classify", num_classes=10).to(device)
    for rule in ("bp", "frsf"):
        new_model = rules.convert(copy.deepcopy(base), rule, seed=0).train()
        old_model = rules.convert(copy.deepcopy(base), rule, seed=0).train()
        new = _trainer(new_model, loss, data, 1e-5, sgd=False)
        rules.attach(new.optimizer, new_model)
        old_opt = torch.optim.Adam(old_model.parameters(), lr=1e-5, weight_decay=5e-4)
        rules.attach(old_opt, old_model)
        scaler = torch.amp.GradScaler("cuda", enabled=new.amp)

        def before_learners(model=old_model, opt=old_opt, scaler=scaler) -> float:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
                out = model(x)
                value = loss(out.float(), y)
            v = float(value.detach())
            scaler.scale(value).backward()
            scaler.step(opt)
            scaler.update()
            return v

        times = interleaved({"learners": lambda t=new: t._train_step(x, y),
                             "before": before_learners}, rounds, warmup, device)
        ratio = statistics.median(a / b for a, b in zip(times["learners"], times["before"],
                                                         strict=True))
        print(f"resnet18 64 px batch 32, {rule}: trainer step with learners / step before "
              f"learners = {ratio:.4f} (target <= 1.01; "
              f"{statistics.median(times['before']) * 1e3:.1f} ms per step)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pepita_vs_bp(50 if args.quick else 300, 10, device)
    trainer_overhead(8 if args.quick else 30, 3, device)


if __name__ == "__main__":
    main()
