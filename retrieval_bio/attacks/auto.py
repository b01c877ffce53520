"""AutoAttack-style evaluation (Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020): APGD-CE, then APGD-T
(targeted DLR), then Square, each on the images the previous ones left correctly
classified; the per-image worst case is the robust accuracy.

This is the paper's *standard* ensemble (APGD-CE, APGD-T, FAB-T, Square) without FAB-T, a
minimum-norm attack: on the same images it can only be weaker than the standard AutoAttack,
never stronger. It is not ART's ``AutoAttack`` that seed 002 ran (APGD-CE + untargeted
APGD-DLR + DeepFool + Square): see ``docs/attacks.md``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..progress import Progress
from .apgd import APGD, APGDT
from .base import ATTACKS, Attack, EnsembleAttack
from .square import Square

#: The parts, in the order they run (keys of :attr:`AutoAttack.breakdown`).
PARTS = ("apgd-ce", "apgd-t", "square")


@ATTACKS.register("auto", help="AutoAttack-style (Croce & Hein 2020): APGD-CE, APGD-T, Square")
class AutoAttack(Attack):
    """APGD-CE, then APGD-T, then Square, each only on the images still correctly classified;
    an image counts as robust when all three fail on it.

    The parts are :class:`~retrieval_bio.attacks.APGD` (``loss="ce"``),
    :class:`~retrieval_bio.attacks.APGDT` and :class:`~retrieval_bio.attacks.Square`, with
    this attack's ε, norm, gradient source (Square has none and ignores it) and seed; each
    part gets a generator seeded with ``seed`` at every call and draws its randomness for all
    N images of the call, so the images a part breaks are exactly those it breaks when run
    alone on the same batch (up to float rounding in batches of other sizes): the robust
    accuracy is the per-image AND of the three parts run separately (tested).

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``, C ≥ 4 (APGD-T).
        eps: budget (pixels in [0, 1]) in ``norm``.
        norm: ``"linf"`` (default) or ``"l2"`` (over the C·H·W entries of an image).
        n_iter: APGD iterations per run (AutoAttack: 100).
        n_restarts: APGD-CE runs (AutoAttack standard: 1) and APGD-T runs per target class.
        n_target_classes: APGD-T's targets (AutoAttack: 9; at most C − 1).
        n_queries: Square's queries per image (AutoAttack: 5,000).
        p_init: Square's initial square size (AutoAttack: 0.8).
        grad: ``"exact"`` or ``"model"`` gradient source of the APGD parts (SPEC §2).
        seed: seeds every part.

    Attributes:
        breakdown: counts over every call since construction (or :meth:`reset_counters`):
            ``{"clean_errors": misclassified before any attack, "apgd-ce": broken by
            APGD-CE, "apgd-t": broken by APGD-T among those APGD-CE left, "square": broken
            by Square among those both left, "robust": left}``; they sum to the number of
            images attacked.
        parts: ``{name: attack}`` in the order they run.
    """

    name = "auto"

    def __init__(
        self, model: nn.Module, eps: float, *, norm: str = "linf", n_iter: int = 100,
        n_restarts: int = 1, n_target_classes: int = 9, n_queries: int = 5000,
        p_init: float = 0.8, grad: str = "exact", seed: int = 0, **options: Any,
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed, norm=norm, **options)
        common = dict(norm=norm, grad=grad, seed=seed)
        # bpda / eot shape the APGD parts' gradients; Square is gradient-free
        self.parts: dict[str, EnsembleAttack] = {
            "apgd-ce": APGD(model, eps, loss="ce", n_iter=n_iter, n_restarts=n_restarts,
                            **common, **options),
            "apgd-t": APGDT(model, eps, n_iter=n_iter, n_restarts=n_restarts,
                            n_target_classes=n_target_classes, **common, **options),
            "square": Square(model, eps, n_queries=n_queries, p_init=p_init, **common),
        }
        self.n_iter = int(n_iter)
        self.n_queries = int(n_queries)
        self.breakdown = self._zero_breakdown()

    @property
    def steps(self) -> int:
        """APGD iterations per run (what a report calls ``steps``)."""
        return self.n_iter

    @staticmethod
    def _zero_breakdown() -> dict[str, int]:
        return {"clean_errors": 0, **dict.fromkeys(PARTS, 0), "robust": 0}

    def reset_counters(self) -> None:
        super().reset_counters()
        self.breakdown = self._zero_breakdown()

    def __repr__(self) -> str:
        return (f"AutoAttack(eps={self.eps:g}, norm={self.norm!r}, n_iter={self.n_iter}, "
                f"n_queries={self.n_queries}, grad={self.grad!r}, seed={self.seed})")

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        y = self.class_ids(labels)
        robust = self.predict(images).argmax(1) == y
        self.breakdown["clean_errors"] += int((~robust).sum())
        adv = images.clone()
        for name, part in self.parts.items():
            if self.eps == 0 or not robust.any():
                continue  # nothing left to break (ε = 0 cannot move an image)
            grads, forwards = part.n_grad_calls, part.n_forward_calls
            # each part draws from its own generator, seeded as when it runs alone
            gen = torch.Generator(device=images.device).manual_seed(part.seed)
            part_adv, fooled = part.run(images, y, gen, progress, active=robust)
            self.n_grad_calls += part.n_grad_calls - grads
            self.n_forward_calls += part.n_forward_calls - forwards
            adv[fooled] = part_adv[fooled]
            robust &= ~fooled
            self.breakdown[name] += int(fooled.sum())
        self.breakdown["robust"] += int(robust.sum())
        return adv
