"""Seeded split helpers shared by the loaders (per-class counts, random counts, carve-outs).

Every function is deterministic in ``seed`` and returns index arrays into the item pool.
The database is always shuffled once (seeded) so that no order-based tie-break can
correlate with class (SPEC §5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import per_class_split
from .errors import DatasetError

PARTS = ("query", "validation", "train")


def merge_counts(
    defaults: Mapping[str, int], override: Mapping[str, int] | None, dataset: str, protocol: str
) -> dict[str, int]:
    """``defaults`` updated with ``override`` (the ``counts=`` keyword); unknown keys fail."""
    out = dict(defaults)
    for key, value in (override or {}).items():
        if key not in out:
            raise DatasetError(
                f"{dataset} protocol {protocol!r} takes counts for {sorted(out)}, got {key!r}"
            )
        if int(value) < 0:
            raise DatasetError(f"counts[{key!r}] must be >= 0, got {value}")
        out[key] = int(value)
    return out


def shuffled(idx: np.ndarray | Sequence[int], seed: int) -> np.ndarray:
    """``idx`` in a seeded random order (the database's one shuffle)."""
    return np.random.default_rng([seed, 1]).permutation(np.asarray(idx, dtype=np.int64))


def per_class_parts(
    targets: np.ndarray, per_class: Mapping[str, int], seed: int, dataset: str,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per class, seeded: ``per_class["query"]`` query, then validation, then train items.

    Returns ``{"query", "validation", "train", "rest"}`` index arrays (``rest``: every item in
    none of the three). Raises :class:`DatasetError` naming the first class that has too
    few items.
    """
    targets = np.asarray(targets)
    need = sum(per_class[p] for p in PARTS)
    classes, sizes = np.unique(targets, return_counts=True)
    for c, n in zip(classes, sizes, strict=True):
        if n < need:
            name = class_names[c] if class_names is not None else str(c)
            wanted = ", ".join(f"{per_class[p]} {p}" for p in PARTS)
            raise DatasetError(
                f"{dataset}: class {name!r} has {n} items, the protocol needs {need} per class "
                f"({wanted}); pass smaller counts= for a small dataset"
            )
    q, v, t, rest = per_class_split(targets, [per_class[p] for p in PARTS] + [-1], seed)
    return {"query": q, "validation": v, "train": t, "rest": rest}


def random_parts(
    n: int, counts: Mapping[str, int], seed: int, dataset: str
) -> dict[str, np.ndarray]:
    """Seeded random split of ``n`` items into query, validation, train and the rest."""
    need = sum(counts[p] for p in PARTS)
    if n < need:
        wanted = ", ".join(f"{counts[p]} {p}" for p in PARTS)
        raise DatasetError(
            f"{dataset}: {n} usable items, the protocol needs {need} ({wanted}); "
            f"pass smaller counts= for a small dataset"
        )
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for p in PARTS:
        out[p] = perm[start : start + counts[p]]
        start += counts[p]
    out["rest"] = perm[start:]
    return out


def carve(
    idx: np.ndarray, size: int, seed: int, dataset: str, what: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` (seeded) into ``(kept, carved)`` with ``len(carved) == size``."""
    idx = np.asarray(idx, dtype=np.int64)
    if size > len(idx):
        raise DatasetError(
            f"{dataset}: cannot carve {size} validation items from {len(idx)} {what} items"
        )
    perm = np.random.default_rng([seed, 2]).permutation(len(idx))
    return idx[np.sort(perm[size:])], idx[perm[:size]]


def stratified_carve(
    targets: np.ndarray, idx: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``round(fraction * n_c)`` items of every class c out of ``idx`` (seeded).

    Returns ``(kept, carved)``; ``kept`` keeps ``idx``'s order, ``carved`` is shuffled.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {fraction}")
    idx = np.asarray(idx, dtype=np.int64)
    t = np.asarray(targets)[idx]
    rng = np.random.default_rng([seed, 3])
    carved = []
    for c in np.unique(t):
        members = np.flatnonzero(t == c)
        carved.append(rng.permutation(members)[: round(fraction * len(members))])
    out = np.concatenate(carved) if carved else np.zeros(0, np.int64)
    mask = np.zeros(len(idx), bool)
    mask[out] = True
    return idx[~mask], idx[rng.permutation(out)]
