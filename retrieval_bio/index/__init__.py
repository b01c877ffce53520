"""retrieval_bio.index: Hamming-distance search over binary codes (SPEC §5).

``HammingIndex(bits, kind="flat")`` wraps FAISS binary indexes (``INDEX_KINDS``: flat, hash,
multihash, ivf) with the verbs ``add``, ``search``, ``range_search``, ``save``/``load``;
``pack_codes``/``unpack_codes`` convert between ±1 codes and packed bytes.
"""

from .codes import as_packed, check_pm1, pack_codes, sign_codes, unpack_codes
from .hamming import GPU_MAX_K, HammingIndex, gpu_available, split_ranges
from .kinds import INDEX_KINDS, IndexKind

__all__ = [
    "GPU_MAX_K",
    "INDEX_KINDS",
    "HammingIndex",
    "IndexKind",
    "as_packed",
    "check_pm1",
    "gpu_available",
    "pack_codes",
    "sign_codes",
    "split_ranges",
    "unpack_codes",
]
