"""What each learning rule's feedback matrix B is made of (SPEC §2, seed 001 §3.1).

A rule is described by a :class:`RuleSpec`; the layers in :mod:`.layers` build B from it.
The registry :data:`RULE_REGISTRY` is what the CLI lists (``--rule``) with its help text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry

SCALES = ("norm", "none", "init")
"""Scale options for B (SPEC §2); ``"norm"`` is the default, see :func:`~.convert.convert`."""


@dataclass(frozen=True)
class RuleSpec:
    """How a rule's B is built.

    Attributes:
        name: the CLI name.
        sign: B uses sign(W) of the current weights (uSF, frSF, brSF).
        magnitude: ``None`` (no magnitude matrix), ``"fixed"`` (M ~ U[0, 1] drawn once, frSF)
            or ``"batch"`` (M ~ U[0, 1] redrawn after every optimiser step, brSF).
        random: B is a fixed random matrix R ~ N(0, 1) drawn at conversion (FA).
    """

    name: str
    sign: bool = False
    magnitude: str | None = None
    random: bool = False

    @property
    def is_bp(self) -> bool:
        return not (self.sign or self.random)


RULE_REGISTRY: Registry[RuleSpec] = Registry("rule")

_SPECS = (
    (RuleSpec("bp"), "backpropagation: B = W (ordinary autograd)"),
    (RuleSpec("fa", random=True),
     "feedback alignment (Lillicrap et al. 2016): B = s*R, R ~ N(0,1) fixed at conversion"),
    (RuleSpec("usf", sign=True),
     "uniform sign-concordant feedback (Liao et al. 2016): B = s*sign(W)"),
    (RuleSpec("frsf", sign=True, magnitude="fixed"),
     "fixed random-magnitude sign-concordant feedback: B = s*M*sign(W), M ~ U[0,1] fixed"),
    (RuleSpec("brsf", sign=True, magnitude="batch"),
     "batchwise random-magnitude sign-concordant feedback: M redrawn after every step"),
)
for _spec, _help in _SPECS:
    RULE_REGISTRY.register(_spec.name, help=_help)(_spec)

RULES: tuple[str, ...] = tuple(spec.name for spec, _ in _SPECS)
"""All rule names, BP first: ``("bp", "fa", "usf", "frsf", "brsf")``."""


def has_feedback_path(rule: str) -> bool:
    """Whether a model trained with ``rule`` back-propagates through feedback matrices B ≠ W,
    so that its own (``grad="model"``) and the exact (``grad="exact"``) input gradients are
    different computations.

    True for the feedback rules of :data:`RULES` other than ``bp``; False for ``bp`` and for
    any name not in :data:`RULES` (learning procedures such as ``pepita`` train a plain
    module whose backward is ordinary autograd, so the two gradients coincide).
    """
    return rule in RULES and rule != "bp"
