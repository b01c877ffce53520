"""Adversarial attacks on hashing retrieval (HAG, SDHA) and classifiers (FGSM, PGD, Square,
APGD, APGD-T and the AutoAttack-style ensemble).

One class per attack on a shared :class:`Attack` base (torchattacks style)::

    attack = HAG(model, eps=0.01, steps=5, grad="exact")     # or ATTACKS.get("hag")(...)
    adv = attack(images, labels)                               # images in [0, 1]

Every attack works in [0, 1] pixel space under an L∞ budget (``norm="linf"``, the default)
or, for the classifier attacks, an L2 budget over the C·H·W entries of an image
(``norm="l2"``); it projects and clamps after every step, runs the model in eval mode, takes
gradients w.r.t. the input only and chooses its gradient source with ``grad="exact"``
(through W) or ``grad="model"`` (the model's feedback path), SPEC §2, §7, §8. See
``docs/attacks.md``.
"""

from .apgd import APGD, APGDT, apgd_checkpoints, dlr_loss, dlr_targeted_loss
from .auto import AutoAttack
from .base import ATTACKS, GRAD_SOURCES, NORM_LABELS, NORMS, Attack, EnsembleAttack, class_indices
from .fgsm import FGSM
from .hag import HAG, hag_loss, hag_mask
from .pgd import PGD
from .relaxed import ALPHA_SCHEDULE, alpha_at, alpha_schedule, theory_codes
from .sdha import SDHA, relevance_mask, sdha_distance, sdha_surrogate, sdha_weights
from .square import Square, margin, p_schedule, square_pattern

__all__ = [
    "ALPHA_SCHEDULE", "APGD", "APGDT", "ATTACKS", "Attack", "AutoAttack", "EnsembleAttack", "FGSM",
    "GRAD_SOURCES", "HAG", "NORMS", "NORM_LABELS", "PGD", "SDHA", "Square", "alpha_at",
    "alpha_schedule", "apgd_checkpoints", "class_indices", "dlr_loss", "dlr_targeted_loss",
    "hag_loss", "hag_mask", "margin", "p_schedule", "relevance_mask", "sdha_distance",
    "sdha_surrogate", "sdha_weights", "square_pattern", "theory_codes",
]
