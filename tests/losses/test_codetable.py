"""ε for HyP²: the code table against SPEC §4's figures and a brute-force search."""

from __future__ import annotations

import itertools
import math

import pytest

from retrieval_bio.losses import ceil_log2, hyp2_threshold, load_codetable


@pytest.mark.parametrize(
    ("num_classes", "bits", "expected"),
    [
        (10, 16, 0.0), (10, 32, 0.0), (10, 48, 0.0), (10, 64, -0.03125),
        (80, 16, 0.25), (80, 32, 0.125), (80, 48, 1 / 12), (80, 64, 0.0),
        (100, 16, 0.25), (100, 32, 0.125), (100, 48, 1 / 12), (100, 64, 0.0),
    ],
)
def test_threshold_matches_spec_examples(num_classes: int, bits: int, expected: float) -> None:
    assert hyp2_threshold(num_classes, bits) == pytest.approx(expected, abs=1e-9)


def test_ceil_log2_matches_float_log_on_non_powers_and_is_exact_on_powers() -> None:
    for n in range(1, 2000):
        assert ceil_log2(n) == math.ceil(math.log2(n) - 1e-12), n
    for m in range(60):
        assert ceil_log2(2**m) == m
        assert ceil_log2(2**m + 1) == m + 1


@pytest.mark.parametrize(("num_classes", "bits"), [(1, 16), (10, 300), (100, 4), (10, 0)])
def test_threshold_outside_table_raises_clearly(num_classes: int, bits: int) -> None:
    with pytest.raises(ValueError, match="threshold|classes"):
        hyp2_threshold(num_classes, bits)


def _best_max_cosine(bits: int, log2_words: int) -> float:
    """Brute force: min over sets of 2**log2_words distinct K-bit words of the max pair cosine.

    XOR-translating a code keeps all distances, so WLOG the set contains the zero word.
    """
    n_words = 2**log2_words
    best_dist = 0
    for rest in itertools.combinations(range(1, 2**bits), n_words - 1):
        words = (0, *rest)
        d = min(bin(a ^ b).count("1") for a, b in itertools.combinations(words, 2))
        best_dist = max(best_dist, d)
    return (bits - 2 * best_dist) / bits  # cosine of ±1 words at Hamming distance d


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_table_matches_brute_force_for_short_codes(bits: int) -> None:
    table = load_codetable()
    for m in range(1, bits + 1):
        assert table[(bits, m)] == pytest.approx(_best_max_cosine(bits, m), abs=1e-9), (bits, m)


def test_table_is_parsed_once() -> None:
    assert load_codetable() is load_codetable()
