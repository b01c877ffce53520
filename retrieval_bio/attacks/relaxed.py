"""Pieces shared by the hashing attacks (SPEC §7): the α schedule of the relaxed code
h' = tanh(α·f(x')) and the "theory" query code.

The schedule follows SAAT's ``get_alpha`` (xandery-geek/SAAT, ``model/util.py``), which both
SAAT's ``hag.py`` and ``sdha.py`` use: iteration ``i`` of ``steps`` takes segment
``int(i / (steps / 10))`` of the 10-entry list. We compute the same index in integer
arithmetic, ``(10 * i) // steps``, which avoids float rounding at segment edges. For steps
that are not a multiple of 10 some segments are skipped or repeated; with the paper's 5
steps the α values are 0.1, 0.1, 0.1, 0.3, 0.7 (segments 0, 2, 4, 6, 8) — α = 1.0 is only
reached when steps >= 10.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..models import binarize
from ..progress import Progress

ALPHA_SCHEDULE = (0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def alpha_at(step: int, steps: int) -> float:
    """α for 0-based iteration ``step`` of ``steps`` (SAAT's 10-segment schedule)."""
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}), got {step}")
    return ALPHA_SCHEDULE[(len(ALPHA_SCHEDULE) * step) // steps]


def alpha_schedule(steps: int) -> list[float]:
    """The α of every iteration: ``[alpha_at(i, steps) for i in range(steps)]``."""
    return [alpha_at(i, steps) for i in range(steps)]


@torch.no_grad()
def theory_codes(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The "theory" bound's query codes (SPEC §7): −sign(h) of the clean output, int8 ±1.

    The code farthest (in Hamming distance) from the clean query code: what a perfect
    untargeted attack on the query code would reach. ``images`` ``(N, 3, H, W)`` in [0, 1];
    returns ``(N, K)`` int8 with sign(0) = +1 before negation. The model is run in eval mode
    and its mode restored.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        dev = next(model.parameters()).device
        return -binarize(model(images.to(dev)))
    finally:
        for m, training in modes:
            m.train(training)


def optimise_relaxed(
    attack, images: torch.Tensor, optimizer: torch.optim.Optimizer,
    x_adv: torch.Tensor, per_query_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    progress: Progress, name: str,
) -> torch.Tensor:
    """The loop HAG and SDHA share: ``attack.steps`` iterations of ``optimizer`` on ``x_adv``
    minimising ``sum(per_query_loss(h', x')) / attack.ref_batch`` with h' = tanh(α·f(x')) on
    the α schedule, projecting onto the ε-ball and [0, 1] after every step. One forward and
    one input-gradient backward per iteration (``attack.input_grad``)."""
    progress.start(name, attack.steps)
    for i in range(attack.steps):
        alpha = alpha_at(i, attack.steps)

        def loss_fn(out: torch.Tensor, x: torch.Tensor, alpha: float = alpha) -> torch.Tensor:
            return per_query_loss(torch.tanh(alpha * out), x).sum() / attack.ref_batch

        _, x_adv.grad = attack.input_grad(x_adv, loss_fn)
        optimizer.step()
        with torch.no_grad():
            x_adv.copy_(attack.project(x_adv, images))
        progress.advance()
    progress.stop()
    x_adv.grad = None
    return x_adv
