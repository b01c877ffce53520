"""The HyP² margin ε from a coding-theory table (Xu et al., ACM MM 2022, "HyP²: Hyper-sphere
Proxies and Pairs"; SPEC §4).

ε is the best achievable *maximum* pairwise cosine between ``2**ceil(log2 C)`` binary codewords
of length K: C classes cannot be spread more evenly than that on the K-bit hypercube, so the
loss does not push dissimilar codes apart below it. The figures ship as package data
``retrieval_bio/data/hyp2_codetable.csv`` (columns ``bits, log2_codewords, max_cosine``).
"""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources

_TABLE_FILE = "hyp2_codetable.csv"


@functools.lru_cache(maxsize=1)
def load_codetable() -> dict[tuple[int, int], float]:
    """The table as ``{(bits, log2_codewords): max_cosine}`` (parsed once, then cached)."""
    text = resources.files("retrieval_bio").joinpath("data", _TABLE_FILE).read_text("utf-8")
    table: dict[tuple[int, int], float] = {}
    for row in csv.DictReader(io.StringIO(text)):
        table[(int(row["bits"]), int(row["log2_codewords"]))] = float(row["max_cosine"])
    return table


def ceil_log2(n: int) -> int:
    """⌈log2 n⌉ for an integer n ≥ 1, exact (no floating-point log)."""
    if n < 1:
        raise ValueError(f"ceil_log2 needs n >= 1, got {n}")
    return (n - 1).bit_length()


def hyp2_threshold(num_classes: int, bits: int) -> float:
    """HyP²'s ε: the best achievable max cosine of ``2**ceil(log2 num_classes)`` K-bit codewords.

    Args:
        num_classes: C, number of classes (≥ 2).
        bits: K, code length in bits.

    Returns:
        ε in [-1, 1] (a cosine). E.g. C = 10: 0.0 at 16/32/48 bits, -0.03125 at 64;
        C = 80 or 100: 0.25 / 0.125 / 0.0833 / 0.0 at 16 / 32 / 48 / 64 bits.

    Raises:
        ValueError: if C < 2 or (bits, ⌈log2 C⌉) is not in the table.
    """
    if num_classes < 2:
        raise ValueError(f"HyP² needs at least 2 classes, got num_classes={num_classes}")
    m = ceil_log2(num_classes)
    table = load_codetable()
    try:
        return table[(bits, m)]
    except KeyError:
        max_bits = max(b for b, _ in table)
        raise ValueError(
            f"no HyP² threshold for bits={bits}, num_classes={num_classes} "
            f"(log2 codewords={m}): the table covers 1 <= bits <= {max_bits} and "
            f"1 <= log2 codewords <= bits; pass threshold= explicitly"
        ) from None
