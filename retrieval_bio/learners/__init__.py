"""Learning procedures: how a batch becomes parameter gradients.

The run's ``rule`` names one of two things:

* a **layer rule** of :mod:`retrieval_bio.rules` (``bp``, ``fa``, ``usf``, ``frsf``,
  ``brsf``): the model's Linear/Conv2d layers are converted and trained by the
  :class:`Autograd` learner (``loss.backward()``);
* a **learner** registered in :data:`LEARNERS` (``pepita``; later ``ep``, ``krotov``): a
  procedure that writes ``.grad`` itself.

``--adv-train`` wraps either in :class:`AdversarialTraining`. Usage::

    model = learners.prepare_model(model, "pepita", scale="norm", seed=0)
    learner = learners.create_learner("pepita", seed=0, options={"output_error": "first"})
    trainer = Trainer(model, objective, train_set, learner=learner, ...)

How the next procedures fit, without touching the trainer (docs/learners.md has more):

* Equilibrium Propagation: ``training_step`` relaxes the free phase, then the ±β nudged
  phases, and writes the symmetric estimate into ``.grad`` (or backpropagates a surrogate
  whose gradient is that estimate through ``ctx.backward``); ``uses_amp = False``; it
  returns the readout's cross-entropy at the free equilibrium to log.
* Krotov–Hopfield (``krotov``, :mod:`.krotov`): ``has_loss = supervised = False``, labels
  ignored; ``training_step`` writes ``W.grad = −ΔW / max|ΔW|`` and returns ``None``; the
  ``linear`` schedule decays its rate; ``finish`` checks convergence and prunes; a second
  run (``finetune --init RUN --freeze-backbone``) trains the head with ``autograd``.
* A layer-local extra loss (HaH) or a regulariser (the polarizing front end's bumps): the
  module's ``auxiliary_loss()``, which :class:`Autograd` adds to the objective
  (:func:`~retrieval_bio.learners.autograd.auxiliary_losses`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from .adversarial import MIXES, TRAINING_ATTACKS, AdversarialTraining, build_attack
from .autograd import Autograd
from .base import LEARNERS, Learner, StepContext
from .ep import EquilibriumPropagation
from .krotov import KrotovHopfield
from .pepita import Pepita

#: the learner that trains the layer rules
LAYER_RULE_LEARNER = "autograd"


def rule_names() -> tuple[str, ...]:
    """Every valid ``rule``: the layer rules, then the learners that are procedures."""
    from ..rules import RULES

    return RULES + tuple(n for n in LEARNERS.names() if n != LAYER_RULE_LEARNER)


def is_layer_rule(rule: str) -> bool:
    """``rule`` converts layers and trains through autograd (bp, fa, usf, frsf, brsf)."""
    from ..rules import RULES

    return rule in RULES


def learner_options(rule: str) -> list[str]:
    """The options (``learner_options:`` keys) the learner of ``rule`` takes."""
    if is_layer_rule(rule):
        return []
    params = inspect.signature(LEARNERS.get(rule).__init__).parameters
    return [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "seed"]


def create_learner(rule: str, *, seed: int = 0, options: dict[str, Any] | None = None,
                   adv: dict[str, Any] | None = None) -> Learner:
    """The learner that trains a model under ``rule``.

    Args:
        rule: a layer rule or a registered learner name.
        seed: the run's seed (the learner's own random state, e.g. PEPITA's F).
        options: the learner's options (``learner_options`` of the run config).
        adv: ``AdversarialTraining`` arguments (``attack``, ``eps``, ...) or ``None``.

    Raises:
        ConfigError: an option this learner does not take, or a bad value of one.
    """
    from ..config import ConfigError

    options = dict(options or {})
    known = learner_options(rule)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"learner_options {', '.join(map(repr, unknown))}: rule {rule!r} takes "
            f"{', '.join(known) if known else 'no learner options'}")
    try:
        if is_layer_rule(rule):
            learner: Learner = LEARNERS.get(LAYER_RULE_LEARNER)()
        else:
            learner = LEARNERS.get(rule)(seed=seed, **options)
        if adv:
            if not learner.supervised:
                raise ConfigError(f"rule {rule!r} is unsupervised (labels unused), so it "
                                  f"cannot train adversarially: drop --adv-train")
            learner = AdversarialTraining(learner, seed=seed, **adv)
    except ValueError as e:
        raise ConfigError(f"rule {rule!r}: {e}") from e
    return learner


def prepare_model(model: nn.Module, rule: str, *, scale: str = "norm", seed: int = 0
                  ) -> nn.Module:
    """Make ``model`` trainable (and loadable) under ``rule``: convert its layers for a
    layer rule, or check that the learner can drive it.

    Raises:
        ConfigError: the learner cannot train this model (the message names both and what
            would work).
    """
    from .. import rules

    if is_layer_rule(rule):
        return rules.convert(model, rule, scale=scale, seed=seed)
    LEARNERS.get(rule).check_model(model)
    return model


__all__ = [
    "LAYER_RULE_LEARNER", "LEARNERS", "MIXES", "TRAINING_ATTACKS", "AdversarialTraining",
    "Autograd", "EquilibriumPropagation", "KrotovHopfield", "Learner", "Pepita", "StepContext",
    "build_attack", "create_learner",
    "is_layer_rule", "learner_options", "prepare_model", "rule_names",
]
