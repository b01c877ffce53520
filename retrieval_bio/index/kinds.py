"""The FAISS binary index kinds behind :class:`~retrieval_bio.index.HammingIndex` (SPEC §5).

Each kind is one builder ``(bits, **options) -> faiss.IndexBinary`` registered in
``INDEX_KINDS``; the CLI can list them and their one-line help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss

from ..registry import Registry


@dataclass(frozen=True)
class IndexKind:
    """How to build one kind and what it promises.

    ``exact``: returns the true (distance, id)-ordered neighbours (``ivf`` only when
    ``nprobe >= nlist``). ``defaults``: the options the builder accepts, with their
    defaults (``None``: derived from ``bits``, e.g. ``b = min(bits, 16)`` for ``hash``).
    """

    build: Callable[..., faiss.IndexBinary]
    exact: bool
    needs_train: bool
    defaults: dict[str, int | None] = field(default_factory=dict)


INDEX_KINDS: Registry[IndexKind] = Registry("index kind")


def _flat(bits: int) -> faiss.IndexBinary:
    return faiss.IndexBinaryFlat(bits)


def _hash(bits: int, b: int | None, nflip: int) -> faiss.IndexBinary:
    b = min(bits, 16) if b is None else b
    if not 1 <= b <= min(bits, 64):
        raise ValueError(f"hash: b (bits hashed) must be in 1..{min(bits, 64)}; got {b}")
    index = faiss.IndexBinaryHash(bits, b)
    index.nflip = nflip
    return index


def _multihash(bits: int, nhash: int, b: int | None, nflip: int) -> faiss.IndexBinary:
    b = min(16, bits // max(nhash, 1)) if b is None else b
    if nhash < 1 or not 1 <= b <= 64 or nhash * b > bits:
        raise ValueError(
            f"multihash: need nhash >= 1, 1 <= b <= 64 and nhash * b <= bits ({bits}); "
            f"got nhash={nhash}, b={b}"
        )
    index = faiss.IndexBinaryMultiHash(bits, nhash, b)
    index.nflip = nflip
    return index


def _ivf(bits: int, nlist: int, nprobe: int) -> faiss.IndexBinary:
    if nlist < 1 or nprobe < 1:
        raise ValueError(f"ivf: nlist and nprobe must be >= 1; got nlist={nlist}, nprobe={nprobe}")
    quantizer = faiss.IndexBinaryFlat(bits)
    index = faiss.IndexBinaryIVF(quantizer, bits, nlist)
    # FAISS's Python wrapper keeps ``quantizer`` alive as long as ``index`` (referenced_objects).
    index.nprobe = nprobe
    return index


INDEX_KINDS.register("flat", help="exact brute-force Hamming search (IndexBinaryFlat)")(
    IndexKind(_flat, exact=True, needs_train=False)
)
INDEX_KINDS.register(
    "hash", help="hash table on the first b bits, probing codes within nflip (IndexBinaryHash)"
)(IndexKind(_hash, exact=False, needs_train=False, defaults={"b": None, "nflip": 1}))
INDEX_KINDS.register(
    "multihash", help="nhash tables on disjoint b-bit slices (IndexBinaryMultiHash)"
)(
    IndexKind(
        _multihash, exact=False, needs_train=False, defaults={"nhash": 2, "b": None, "nflip": 1}
    )
)
INDEX_KINDS.register(
    "ivf", help="inverted lists over nlist binary k-means cells; exact when nprobe = nlist"
)(IndexKind(_ivf, exact=False, needs_train=True, defaults={"nlist": 16, "nprobe": 1}))
