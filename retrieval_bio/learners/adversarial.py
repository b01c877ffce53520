"""Adversarial training around any learner (Madry et al. 2018; seed 000 §3.4–3.5).

Each step the batch is attacked against the *current* model, in eval mode, with exact
gradients (``grad="exact"``: through W, whatever the model's own feedback path is), through
the toolkit's attack classes; the wrapped learner then learns from ``[x; x_adv]`` with labels
``[y; y]`` (``mix="both"``, seed 000's "dataset augmented by the adversarial samples") or
from ``x_adv`` alone (``mix="adversarial"``, Madry's). Seed 000's PGD-AT is
``pgd`` ε 0.3, α 0.1, 40 steps, random start; its fast FGSM-AT is ``fgsm`` ε 0.3.

The attack draws its random start from a private generator seeded per step
(``seed``, global step), so training stays reproducible and the global RNG (dropout masks)
is untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Learner, StepContext

#: attacks that can make training examples, by task (SDHA needs a code database; Square is
#: far too slow per step)
TRAINING_ATTACKS = {"classify": ("fgsm", "pgd"), "hash": ("hag",)}
MIXES = ("both", "adversarial")


class AdversarialTraining(Learner):
    """Wraps ``inner``: perturb the batch, then ``inner.training_step`` on it.

    Args:
        inner: the learner that turns the (mixed) batch into gradients.
        attack: ``"fgsm"`` | ``"pgd"`` (classify) | ``"hag"`` (hash).
        eps: L∞ budget in [0, 1] pixels.
        steps: iterations (PGD, HAG; FGSM ignores it).
        alpha: PGD step size (``None``: ε/3).
        random_start: PGD starts from a uniform point in the ε-ball.
        mix: ``"both"`` (clean and adversarial, batch doubled) or ``"adversarial"``.
        seed: the run's seed (the attack's generator is seeded per step from it).
    """

    name = "adversarial"

    def __init__(self, inner: Learner, attack: str, *, eps: float, steps: int = 10,
                 alpha: float | None = None, random_start: bool = True, mix: str = "both",
                 seed: int = 0) -> None:
        super().__init__()
        if mix not in MIXES:
            raise ValueError(f"adv_mix must be one of {', '.join(MIXES)}, got {mix!r}")
        known = sorted({a for names in TRAINING_ATTACKS.values() for a in names})
        if attack not in known:
            raise ValueError(f"adv_train must be one of none, {', '.join(known)}; got "
                             f"{attack!r}")
        if not 0 < eps <= 1:
            raise ValueError(f"adv_eps must lie in (0, 1] (L∞, pixels in [0, 1]), got {eps}")
        if steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {steps}")
        self.inner = inner
        self.attack = attack
        self.eps, self.steps, self.alpha = float(eps), int(steps), alpha
        self.random_start, self.mix, self.seed = bool(random_start), mix, int(seed)
        self.uses_amp, self.has_loss = inner.uses_amp, inner.has_loss
        self.syncs_gradients = inner.syncs_gradients

    def check_model(self, model: nn.Module) -> None:  # type: ignore[override]
        from ..config import ConfigError

        self.inner.check_model(model)
        task = getattr(model, "task", "classify")
        if self.attack not in TRAINING_ATTACKS.get(task, ()):
            raise ConfigError(
                f"adv_train {self.attack!r} cannot train a {task} model; use "
                f"{' | '.join(TRAINING_ATTACKS.get(task, ()))}")

    def prepare(self, model: nn.Module, objective: nn.Module) -> None:
        self.check_model(model)
        self.inner.prepare(model, objective)

    def examples(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 global_step: int) -> torch.Tensor:
        """Adversarial versions of ``images`` against ``model`` as it is now."""
        attack = build_attack(model, self.attack, eps=self.eps, steps=self.steps,
                              alpha=self.alpha, random_start=self.random_start,
                              seed=self.seed * 1_000_003 + global_step)
        return attack(images, labels)

    def training_step(
        self, model: nn.Module, objective: nn.Module, images: torch.Tensor,
        labels: torch.Tensor, ctx: StepContext,
    ) -> float | None:
        adv = self.examples(model, images, labels, ctx.global_step)
        if self.mix == "both":
            images, labels = torch.cat([images, adv]), torch.cat([labels, labels])
        else:
            images = adv
        return self.inner.training_step(model, objective, images, labels, ctx)

    def describe(self) -> dict[str, object]:
        return {**self.inner.describe(), "adv_train": self.attack, "adv_eps": self.eps,
                "adv_steps": self.steps, "adv_alpha": self.alpha,
                "adv_random_start": self.random_start, "adv_mix": self.mix}


def build_attack(model: nn.Module, name: str, *, eps: float, steps: int = 10,
                 alpha: float | None = None, random_start: bool = True, seed: int = 0):
    """The exact-gradient attack ``name`` (fgsm | pgd | hag) with these settings: the one
    adversarial training and adversarial validation use (with BPDA identity through a
    model's non-differentiable ops, whose true gradient would give back the clean images)."""
    from ..attacks import ATTACKS
    from ..models.frontends import has_bpda_ops

    cls = ATTACKS.get(name)
    # through a quantiser the exact gradient is zero: such examples would be the clean images
    bpda = "identity" if has_bpda_ops(model) else None
    if name == "pgd":
        return cls(model, eps, alpha=alpha, steps=steps, random_start=random_start,
                   grad="exact", seed=seed, bpda=bpda)
    if name == "hag":
        return cls(model, eps, steps, grad="exact", seed=seed, bpda=bpda)
    return cls(model, eps, grad="exact", seed=seed, bpda=bpda)
