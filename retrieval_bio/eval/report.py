"""The retrieval report of a hashing run: every SPEC §5 metric from its ``codes.npz``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import map_at_k, pr_curve, precision_at_k, precision_within_radius, recall_at_k

CODES = "codes.npz"


def load_codes(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``codes.npz`` (query/db codes int8 ±1, multi-hot labels, split ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; a hashing run writes it at the end of "
            f"'retrieval-bio finetune --task hash'"
        )
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def retrieval_report(codes: dict[str, np.ndarray], k: int, radius: int = 2) -> dict[str, Any]:
    """mAP@k (stable index ties and the exact tie expectation), precision@k, recall@k,
    P@H<=radius and the precision-recall curve over Hamming radii.

    Args:
        codes: as :func:`load_codes` returns.
        k: the cut-off (<= 0: whole database).
    """
    args = (codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"])
    curve = pr_curve(*args)
    return {
        "map@k": float(map_at_k(*args, k, ties="index")),
        "k": int(k),
        "map@k_expected_ties": float(map_at_k(*args, k, ties="expected")),
        "precision@k": float(precision_at_k(*args, k)),
        "recall@k": float(recall_at_k(*args, k)),
        f"precision@h<={radius}": float(precision_within_radius(*args, radius=radius)),
        "pr_curve": {"radius": curve.radius.tolist(), "precision": curve.precision.tolist(),
                     "recall": curve.recall.tolist()},
        "num_queries": int(len(codes["query_codes"])),
        "num_database": int(len(codes["db_codes"])),
        "bits": int(codes["query_codes"].shape[1]),
    }
