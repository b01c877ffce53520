"""``HammingIndex``: one small object over FAISS binary indexes (SPEC §5, STYLE "FAISS").

    index = HammingIndex(32, kind="flat")
    index.add(db_codes)                    # ±1 (N, 32) or packed uint8 (N, 4)
    D, I = index.search(query_codes, k=10) # int32 (Q, 10), int64 (Q, 10)

Every kind returns each query's results in (distance, id) order, the order of FAISS's CPU
flat search and of ``map_at_k(ties="index")``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ._merge import sharded_search, sort_rows
from .codes import as_packed
from .kinds import INDEX_KINDS, IndexKind

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # largest k GpuIndexBinaryFlat answers in one search
DEVICES = ("auto", "cpu", "cuda")
_SIDECAR_VERSION = 1


def gpu_available() -> bool:
    """True when this FAISS build has CUDA binary indexes and sees at least one GPU."""
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


class HammingIndex:
    """Hamming-distance search over K-bit codes, backed by a FAISS binary index.

    Args:
        bits: code length K; FAISS needs a multiple of 8.
        kind: one of ``INDEX_KINDS`` -- ``"flat"`` (exact, default), ``"hash"``
            (options ``b``: bits hashed, default min(bits, 16); ``nflip``: hash bits flipped
            when probing, default 1), ``"multihash"`` (``nhash`` tables, default 2, of ``b``
            bits each, default min(16, bits // nhash); ``nflip``, default 1) or ``"ivf"``
            (``nlist`` cells, default 16; ``nprobe`` cells visited, default 1; needs training,
            see :meth:`train`). ``ivf`` with ``nprobe >= nlist`` visits every cell and is exact.
            ``hash``/``multihash`` only see codes close to the query on the hashed bits: their
            results are a subset of the exact ones, correct distances, same order.
        device: ``"cpu"``, ``"cuda"`` (``faiss.GpuIndexBinaryFlat``; ``flat`` only; error when
            CUDA FAISS or a GPU is missing) or ``"auto"`` (CUDA when available, else CPU).
            A CPU copy is always kept: ``range_search`` and ``save`` use it.
        **kind_options: the kind's options above.

    Attributes:
        ntotal: number of codes added (also ``len(index)``).
    """

    def __init__(self, bits: int, kind: str = "flat", device: str = "cpu", **kind_options: Any):
        if not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
            raise ValueError(
                f"bits must be a positive multiple of 8 (FAISS packs bytes); got {bits}"
            )
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
        self.bits = int(bits)
        self.kind = kind
        spec: IndexKind = INDEX_KINDS.get(kind)
        # Private: force the shard-and-merge path with this shard size (tests it on CPU).
        self._max_k: int | None = kind_options.pop("_max_k", None)
        unknown = set(kind_options) - set(spec.defaults)
        if unknown:
            allowed = ", ".join(sorted(spec.defaults)) or "none"
            raise ValueError(f"unknown option(s) {sorted(unknown)} for kind {kind!r}; "
                             f"allowed: {allowed}")
        self.options: dict[str, Any] = {**spec.defaults, **kind_options}
        self._spec = spec
        self._cpu: faiss.IndexBinary = spec.build(self.bits, **self.options)
        use_cuda = device == "cuda" or (device == "auto" and gpu_available() and kind == "flat")
        if use_cuda and not gpu_available():
            raise RuntimeError("device='cuda' needs faiss-gpu (GpuIndexBinaryFlat) and a GPU; "
                               "install the [gpu] extra or use device='cpu'")
        if use_cuda and kind != "flat":
            raise ValueError(f"device='cuda' supports kind='flat' only; got kind={kind!r}")
        self.device = "cuda" if use_cuda else "cpu"
        self._gpu_res: Any = None
        self._gpu_full: Any = None  # one GPU index over everything, for k <= 2048
        self._shards: list[tuple[Any, int, int]] | None = None  # (index, offset, size)

    # ------------------------------------------------------------------ basics
    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return bool(self._cpu.is_trained)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return (f"HammingIndex(bits={self.bits}, kind={self.kind!r}, device={self.device!r}"
                f"{opts}, ntotal={self.ntotal})")

    # ------------------------------------------------------------------ building
    def train(self, codes: Any) -> HammingIndex:
        """Train the kind's structure (``ivf``: binary k-means into ``nlist`` cells).

        ``codes``: ±1 ``(N, bits)`` or packed uint8 ``(N, bits/8)``, N >= nlist. A no-op for
        kinds that need no training. Returns ``self``.
        """
        if not self._spec.needs_train:
            return self
        packed = as_packed(codes, self.bits)
        nlist = self.options.get("nlist", 1)
        if len(packed) < nlist:
            raise ValueError(f"ivf training needs at least nlist={nlist} codes; got {len(packed)}")
        self._cpu.train(packed)
        return self

    def add(self, codes: Any) -> HammingIndex:
        """Append codes; ids continue from ``ntotal``.

        ``codes``: ±1 values ``(N, bits)`` of any signed/float dtype (int8 preferred; torch
        tensors accepted) or packed uint8 ``(N, bits/8)`` (``pack_codes``). An untrained
        ``ivf`` index is first trained on these codes. Returns ``self``.
        """
        packed = as_packed(codes, self.bits)
        if not self.is_trained:
            log.info("training %s index on the %d codes being added", self.kind, len(packed))
            self.train(packed)
        self._cpu.add(packed)
        self._invalidate_device_copies()
        return self

    def _invalidate_device_copies(self) -> None:
        self._gpu_full = None
        self._shards = None

    def _packed_database(self) -> np.ndarray:
        """Packed codes of a flat index ``(ntotal, bits/8)``, read back from FAISS."""
        return faiss.vector_to_array(self._cpu.xb).reshape(self.ntotal, self.bits // 8)

    # ------------------------------------------------------------------ searching
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query by Hamming distance.

        Args:
            queries: ±1 ``(Q, bits)`` or packed uint8 ``(Q, bits/8)``; a 1-D code is one query.
            k: number of neighbours, >= 1.

        Returns:
            ``(distances, ids)``: int32 ``(Q, k)`` Hamming distances in bits and int64
            ``(Q, k)`` database positions, each row in (distance, id) order. Where fewer than
            k codes are found (small database, or ``hash``/``ivf`` missing some), the row is
            padded with distance -1 and id -1.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1; got {k!r}")
        k = int(k)
        q = as_packed(queries, self.bits, name="queries")
        if self.ntotal == 0:
            return np.full((len(q), k), -1, np.int32), np.full((len(q), k), -1, np.int64)
        if self.kind == "flat":
            return self._search_flat(q, k)
        d, i = self._cpu.search(q, k)
        if self.kind == "ivf":
            return self._fix_ivf_ties(q, d, i, k)
        return sort_rows(d, i)

    def _search_flat(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        limit = GPU_MAX_K if self.device == "cuda" else self._max_k
        if limit is not None and k > limit:
            return self._search_sharded(q, k, limit)
        if self.device == "cuda":
            # GPU k-selection need not order ties by id: re-sort (ties at the k-th distance
            # may still hold other ids than the CPU's; distances are exact).
            d, i = self._gpu_index().search(q, k)
            return sort_rows(d, i)
        d, i = self._cpu.search(q, k)  # CPU flat already returns (distance, id) order
        d = d.astype(np.int32, copy=True)
        d[i < 0] = -1  # FAISS pads with INT_MAX
        return d, i.astype(np.int64, copy=False)

    def _search_sharded(self, q: np.ndarray, k: int, shard_size: int):
        if self._shards is None:
            db = self._packed_database()
            self._shards = []
            for offset in range(0, len(db), shard_size):
                part = np.ascontiguousarray(db[offset:offset + shard_size])
                self._shards.append((self._new_flat(part), offset, len(part)))
        searches = [index.search for index, _, _ in self._shards]
        offsets = [offset for _, offset, _ in self._shards]
        sizes = [size for _, _, size in self._shards]
        return sharded_search(searches, offsets, sizes, q, k)

    def _new_flat(self, packed: np.ndarray) -> Any:
        """A flat index over ``packed`` on this index's device."""
        if self.device == "cuda":
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            index = faiss.GpuIndexBinaryFlat(self._gpu_res, self.bits)
        else:
            index = faiss.IndexBinaryFlat(self.bits)
        index.add(packed)
        return index

    def _gpu_index(self) -> Any:
        if self._gpu_full is None:
            self._gpu_full = self._new_flat(self._packed_database())
        return self._gpu_full

    def _fix_ivf_ties(self, q: np.ndarray, d: np.ndarray, i: np.ndarray, k: int):
        """Make ivf's choice among codes tied at the k-th distance the smallest ids.

        IVF scans list by list and keeps the first ties it meets. For full rows, every
        visited code within the k-th distance is fetched with a range search over the same
        cells and the k smallest (distance, id) kept, so with ``nprobe >= nlist`` the result
        equals the flat index's.
        """
        d, i = sort_rows(d, i)
        full = i[:, -1] >= 0
        for kth in np.unique(d[full, -1]):
            rows = np.flatnonzero(full & (d[:, -1] == kth))
            lims, rd, ri = self._range(q[rows], int(kth))
            for row, lo, hi in zip(rows, lims[:-1], lims[1:], strict=True):
                if hi - lo >= k:  # always, as the range visits the same cells as the search
                    d[row], i[row] = rd[lo:lo + k], ri[lo:lo + k]
        return d, i

    def range_search(self, queries: Any, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All codes within Hamming distance ``radius`` of each query, radius INCLUSIVE.

        (FAISS's own ``range_search`` is strict, ``d < radius``; this passes ``radius + 1``.)

        Args:
            queries: ±1 ``(Q, bits)`` or packed uint8 ``(Q, bits/8)``.
            radius: largest distance kept, in bits (``radius=2`` gives P@H<=2's neighbours).

        Returns:
            ``(lims, distances, ids)`` in FAISS's layout: query ``j``'s results are
            ``distances[lims[j]:lims[j+1]]`` (int32) and ``ids[lims[j]:lims[j+1]]`` (int64),
            sorted by (distance, id); ``lims`` is int64 ``(Q + 1,)``. Use
            :func:`split_ranges` for a per-query list. Runs on the CPU copy.
        """
        if not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"radius must be an integer >= 0; got {radius!r}")
        q = as_packed(queries, self.bits, name="queries")
        return self._range(q, int(radius))

    def _range(self, q: np.ndarray, radius: int):
        if self.ntotal == 0 or len(q) == 0:
            return np.zeros(len(q) + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        lims, d, i = self._cpu.range_search(q, radius + 1)
        lims = np.asarray(lims, np.int64)
        d = np.asarray(d).astype(np.int32)
        i = np.asarray(i, np.int64)
        query_of = np.repeat(np.arange(len(q)), np.diff(lims))
        order = np.lexsort((i, d, query_of))
        return lims, d[order], i[order]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (``faiss.write_index_binary``) and ``path + '.json'``
        (kind, bits, options). Returns ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index_binary(self._cpu, str(path))
        meta = {"format": _SIDECAR_VERSION, "kind": self.kind, "bits": self.bits,
                "options": self.options}
        _sidecar(path).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> HammingIndex:
        """Read an index written by :meth:`save`, on ``device`` (see the constructor)."""
        path = Path(path)
        side = _sidecar(path)
        if not side.exists():
            raise FileNotFoundError(f"{side} is missing: HammingIndex.save writes it beside "
                                    f"the FAISS file")
        meta = json.loads(side.read_text())
        index = cls(meta["bits"], kind=meta["kind"], device=device, **meta["options"])
        loaded = faiss.read_index_binary(str(path))
        if loaded.d != index.bits:
            raise ValueError(f"{path} holds {loaded.d}-bit codes but its sidecar says "
                             f"{index.bits}")
        _apply_search_options(loaded, index.options)
        index._cpu = loaded
        return index


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _apply_search_options(index: faiss.IndexBinary, options: dict[str, Any]) -> None:
    """Search-time parameters are not all kept by FAISS's writer; set them again."""
    if "nprobe" in options:
        index.nprobe = options["nprobe"]
    if "nflip" in options:
        index.nflip = options["nflip"]


def split_ranges(lims: np.ndarray, distances: np.ndarray, ids: np.ndarray
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Turn ``range_search``'s ``(lims, distances, ids)`` into one ``(distances, ids)`` per
    query."""
    return [(distances[lo:hi], ids[lo:hi]) for lo, hi in zip(lims[:-1], lims[1:], strict=True)]
