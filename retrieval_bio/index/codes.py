"""Binary code conversions shared by the index and the metrics (SPEC §1).

A K-bit code is stored either as K values in {-1, +1} (int8 preferred, any real or integer
dtype accepted) or packed with ``np.packbits`` over its {0, 1} form, bit 1 <=> +1, giving
``ceil(K / 8)`` uint8 bytes per code (the layout FAISS binary indexes read).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def sign_codes(h: Any) -> np.ndarray:
    """Continuous outputs ``(N, K)`` -> int8 ±1 codes, sign(0) = +1 (SPEC §1)."""
    return np.where(to_numpy(h) >= 0, 1, -1).astype(np.int8)


def check_pm1(codes: Any, name: str = "codes", bits: int | None = None) -> np.ndarray:
    """Validate ±1 codes and return them as a 2-D numpy array ``(N, K)``.

    Raises ``ValueError`` naming the problem: not 2-D, wrong number of bits, or values
    other than -1 and +1 (``sign(h)`` with sign(0) = +1 gives valid codes).
    """
    arr = to_numpy(codes)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (N, bits) of ±1 values; got shape {arr.shape}"
        )
    if bits is not None and arr.shape[1] != bits:
        raise ValueError(f"{name} have {arr.shape[1]} bits per code; expected {bits}")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold numbers -1/+1; got dtype {arr.dtype}")
    if arr.size and not np.all((arr == 1) | (arr == -1)):
        bad = arr[(arr != 1) & (arr != -1)].ravel()[:3]
        raise ValueError(
            f"{name} must hold only -1 and +1 (take sign(h) with sign(0) = +1); "
            f"found values such as {bad.tolist()}"
        )
    return arr


def pack_codes(codes_pm1: Any) -> np.ndarray:
    """Pack ±1 codes ``(N, K)`` into uint8 ``(N, ceil(K / 8))``, bit 1 <=> +1, MSB first.

    Same layout as ``np.packbits(codes > 0, axis=1)``; K not a multiple of 8 is zero-padded.
    """
    arr = check_pm1(codes_pm1)
    return np.packbits(arr > 0, axis=1)


def unpack_codes(packed: Any, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 ``(N, ceil(bits / 8))`` -> int8 ±1 ``(N, bits)``."""
    arr = to_numpy(packed)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(
            f"packed codes must be a 2-D uint8 array; got dtype {arr.dtype}, shape {arr.shape}"
        )
    nbytes = (bits + 7) // 8
    if arr.shape[1] != nbytes:
        raise ValueError(
            f"packed codes have {arr.shape[1]} bytes per code; {bits} bits need {nbytes}"
        )
    unpacked = np.unpackbits(arr, axis=1, count=bits)
    return (unpacked.astype(np.int8) * 2 - 1).astype(np.int8)


def as_packed(codes: Any, bits: int, name: str = "codes") -> np.ndarray:
    """Accept ±1 codes ``(N, bits)`` or packed uint8 ``(N, bits / 8)``; return packed uint8.

    uint8 arrays are read as packed bytes (a uint8 array cannot hold -1); every other numeric
    dtype is read as ±1 values. A 1-D array is taken as a single code. Errors name the
    dtype/shape that did not fit.
    """
    arr = to_numpy(codes)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, bits) ±1 or (N, bits/8) packed uint8; "
                         f"got shape {arr.shape}")
    nbytes = (bits + 7) // 8
    if arr.dtype == np.uint8:
        if arr.shape[1] != nbytes:
            hint = (" (uint8 arrays are read as packed bytes; pass ±1 codes as int8)"
                    if arr.shape[1] == bits else "")
            raise ValueError(
                f"packed {name} have {arr.shape[1]} bytes per code; {bits} bits need "
                f"{nbytes}{hint}"
            )
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "if":
        raise ValueError(
            f"{name} must be ±1 numbers (int8/float) or packed uint8; got dtype {arr.dtype}"
        )
    arr = check_pm1(arr, name=name, bits=bits)
    return np.packbits(arr > 0, axis=1)
