"""The retrieval report of a hashing run: every SPEC §5 metric from its ``codes.npz``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import map_at_k, pr_curve, precision_at_k, precision_within_radius, recall_at_k

CODES = "codes.npz"


#: what ``evaluate`` adds to metrics.json beside the training's own numbers
EVALUATION_KEYS = ("map@k_expected_ties", "precision@k", "recall@k", "pr_curve", "num_queries",
                   "num_database", "bits", "evaluated_weights")


def is_evaluation_key(key: str) -> bool:
    """Whether ``key`` of metrics.json was written by an evaluation (and goes stale when the
    weights or the cut-off change)."""
    return key in EVALUATION_KEYS or key.startswith("precision@h<=")


CODE_ARRAYS = ("query_codes", "query_labels", "query_ids", "db_codes", "db_labels", "db_ids")


def load_codes(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``codes.npz`` (query/db codes int8 ±1, multi-hot labels, split ids).

    Raises:
        RunFolderError: the file is missing, truncated, or lacks an array; the message says
            how to rebuild it (``retrieval-bio evaluate RUN --encode``).
    """
    from ..runs import RunFolderError

    path = Path(path)
    rebuild = (f"rebuild it from the trained weights with: retrieval-bio evaluate "
               f"{path.parent} --encode")
    if not path.is_file():
        raise RunFolderError(
            f"{path} does not exist; a hashing run writes it at the end of "
            f"'retrieval-bio finetune --task hash'; {rebuild}")
    try:
        with np.load(path, allow_pickle=False) as z:
            codes = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError...
        raise RunFolderError(
            f"{path} cannot be read ({type(e).__name__}: {e}): it is damaged or truncated; "
            f"{rebuild}") from e
    lacking = [k for k in CODE_ARRAYS if k not in codes]
    if lacking:
        raise RunFolderError(f"{path} lacks {', '.join(lacking)}; {rebuild}")
    return codes


def retrieval_report(codes: dict[str, np.ndarray], k: int, radius: int = 2) -> dict[str, Any]:
    """mAP@k (stable index ties and the exact tie expectation), precision@k, recall@k,
    P@H<=radius and the precision-recall curve over Hamming radii.

    Args:
        codes: as :func:`load_codes` returns.
        k: the cut-off (<= 0: whole database). At ``k <= 0`` precision@k and recall@k are
            left out: over the whole database they are the label base rate and 1, numbers
            that say nothing about the codes.
    """
    args = (codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"])
    curve = pr_curve(*args)
    at_k = {} if k <= 0 else {"precision@k": float(precision_at_k(*args, k)),
                              "recall@k": float(recall_at_k(*args, k))}
    return {
        "map@k": float(map_at_k(*args, k, ties="index")),
        "k": int(k),
        "map@k_expected_ties": float(map_at_k(*args, k, ties="expected")),
        **at_k,
        f"precision@h<={radius}": float(precision_within_radius(*args, radius=radius)),
        "pr_curve": {"radius": curve.radius.tolist(), "precision": curve.precision.tolist(),
                     "recall": curve.recall.tolist()},
        "num_queries": int(len(codes["query_codes"])),
        "num_database": int(len(codes["db_codes"])),
        "bits": int(codes["query_codes"].shape[1]),
    }
