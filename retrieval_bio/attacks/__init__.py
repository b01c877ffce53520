"""Adversarial attacks on hashing retrieval (HAG, SDHA) and classifiers (FGSM, PGD, Square).

One class per attack on a shared :class:`Attack` base (torchattacks style)::

    attack = HAG(model, eps=0.01, steps=5, grad="exact")     # or ATTACKS.get("hag")(...)
    adv = attack(images, labels)                               # images in [0, 1]

Every attack is L∞ in [0, 1] pixel space, projects and clamps after every step, runs the
model in eval mode, takes gradients w.r.t. the input only and chooses its gradient source
with ``grad="exact"`` (through W) or ``grad="model"`` (the model's feedback path), SPEC §2,
§7, §8. See ``docs/attacks.md``.
"""

from .base import ATTACKS, GRAD_SOURCES, Attack, class_indices
from .fgsm import FGSM
from .hag import HAG, hag_loss, hag_mask
from .pgd import PGD
from .relaxed import ALPHA_SCHEDULE, alpha_at, alpha_schedule, theory_codes
from .sdha import SDHA, relevance_mask, sdha_distance, sdha_surrogate, sdha_weights
from .square import Square, margin, p_schedule

__all__ = [
    "ALPHA_SCHEDULE", "ATTACKS", "Attack", "FGSM", "GRAD_SOURCES", "HAG", "PGD", "SDHA",
    "Square", "alpha_at", "alpha_schedule", "class_indices", "hag_loss", "hag_mask", "margin",
    "p_schedule", "relevance_mask", "sdha_distance", "sdha_surrogate", "sdha_weights",
    "theory_codes",
]
