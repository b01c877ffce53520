"""retrieval_bio.eval: retrieval metrics over binary codes (SPEC §5).

Plain functions over arrays -- ``map_at_k``, ``precision_at_k``, ``recall_at_k``,
``pr_curve``, ``precision_within_radius``, ``hamming_distances`` -- usable on codes produced
anywhere, no model needed.
"""

from .metrics import (
    TIES,
    PRCurve,
    hamming_distances,
    map_at_k,
    pr_curve,
    precision_at_k,
    precision_within_radius,
    recall_at_k,
)

__all__ = [
    "TIES",
    "PRCurve",
    "hamming_distances",
    "map_at_k",
    "pr_curve",
    "precision_at_k",
    "precision_within_radius",
    "recall_at_k",
]
