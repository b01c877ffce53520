"""Equilibrium Propagation speed, measured against its references in one process.

1. Relaxation steps per second of the explicit equations of motion (the fast path,
   ``EPConvNet.step``: one conv stack + one transposed conv per layer, no autograd) against
   autograd of Φ (``EPConvNet.step_autograd``: Laborieux's way, a forward and a backward of Φ
   per step) on seed 002's CIFAR-10 net (128-256-512-512) at batch 16. Issue 12 expects the
   explicit path >= 1.3x faster; seed 002 §4.2 reports 15 h -> 10 h on an A100 (1.5x).
2. One EP training step (free phase T_free, two nudged phases of T_nudge, the energy and
   readout gradients; ``EquilibriumPropagation.training_step``) in units of one BP step of
   the same topology (``cnn-cifar10``: forward, backward) at the same batch. Seed 002 says
   about 200x at T = 250 / 30 / 30 (310 relaxation steps). ``--t-free/--t-nudge`` shorten
   the phases on a slow machine; the step count is printed beside the ratio and the
   full-length ratio is extrapolated from the measured per-relaxation-step cost.

Variants are interleaved (the order rotates every round) so machine noise hits them alike;
the printed ratio is the median over rounds of the per-round ratio.

    python benchmarks/ep_dynamics.py              # CIFAR-10 preset, batch 16
    python benchmarks/ep_dynamics.py --quick      # fewer rounds, shorter phases
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

# the benchmarks' one interleaved timer (run as a script, benchmarks/ is on sys.path)
from learner_steps import interleaved

from retrieval_bio.learners import EquilibriumPropagation, StepContext
from retrieval_bio.models import create_model


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--relax-steps", type=int, default=5,
                        help="relaxation steps timed per round in part 1")
    parser.add_argument("--t-free", type=int, default=250)
    parser.add_argument("--t-nudge", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, T_free 25 / T_nudge 3 in part 2")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.t_free, args.t_nudge = 3, 25, 3
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}")

    ep = create_model("ep-cifar10", num_classes=10, t_free=args.t_free,
                      t_nudge=args.t_nudge).to(device)
    net = ep.backbone.net
    x = ep.backbone.normalize(torch.rand(args.batch, 3, 32, 32, device=device))
    with torch.no_grad():
        start = net.relax(x, 10)  # a state away from zero: pools without ties

    def relax(step):
        def run():
            s = start
            with torch.no_grad():
                for _ in range(args.relax_steps):
                    s = step(x, s)
        return run

    times = interleaved({"explicit": relax(net.step), "autograd": relax(net.step_autograd)},
                        args.rounds, 1, device)
    per_step = {k: statistics.median(v) / args.relax_steps for k, v in times.items()}
    print("1. relaxation steps/s: explicit {:.2f}, autograd of Phi {:.2f}; explicit is "
          "{:.2f}x faster (issue expects >= 1.3)".format(
              1 / per_step["explicit"], 1 / per_step["autograd"],
              ratio(times, "autograd", "explicit")))

    bp = create_model("cnn-cifar10", num_classes=10).to(device)
    images = torch.rand(args.batch, 3, 32, 32, device=device)
    labels = F.one_hot(torch.randint(0, 10, (args.batch,)), 10).float().to(device)

    def objective(z, y):
        return F.cross_entropy(z, y.argmax(1))

    learner = EquilibriumPropagation()
    ctx = StepContext(device=device, amp=False, scaler=torch.amp.GradScaler(enabled=False))

    def ep_step():
        ep.zero_grad()
        learner.training_step(ep, objective, images, labels, ctx)

    def bp_step():
        bp.zero_grad()
        objective(bp(images), labels).backward()

    times = interleaved({"ep": ep_step, "bp": bp_step}, args.rounds, 1, device)
    relaxations = args.t_free + 2 * args.t_nudge
    r = ratio(times, "ep", "bp")
    full = 250 + 2 * 30
    print(f"2. one EP step ({args.t_free} + 2 x {args.t_nudge} = {relaxations} relaxation "
          f"steps) = {r:.1f} BP steps of cnn-cifar10; at seed 002's {full} steps about "
          f"{r * full / relaxations:.0f} (seed 002: ~200)")


if __name__ == "__main__":
    main()
