"""Hand-computed values of the hashing attacks' objectives and schedules (SPEC §7)."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval_bio.attacks import (
    ALPHA_SCHEDULE,
    alpha_schedule,
    hag_loss,
    hag_mask,
    sdha_distance,
    sdha_surrogate,
    sdha_weights,
)

# Two queries, K = 4. Query 0: bits 1 and 2 are already flipped (|h' − sign h| = 1.7 ≥ 1.5),
# bits 0 and 3 are not. Query 1: every bit flipped, so its mask is empty.
H_CLEAN = torch.tensor([[0.8, -0.4, 0.5, -1.0], [-0.5, 0.3, 0.2, 0.9]], dtype=torch.float64)
H_ADV = torch.tensor([[0.6, 0.7, -0.7, -0.2], [0.9, -0.8, -0.9, -0.6]], dtype=torch.float64)


def test_hag_mask_by_hand():
    expected = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.float64)
    assert torch.equal(hag_mask(H_ADV, H_CLEAN, 0.5), expected)


def test_hag_loss_by_hand():
    # q0: masked similarity (0.6·0.8 + (−0.2)(−1.0)) / 2 = 0.34 -> (1.34)² = 1.7956;
    #     balance (mean h')² = (0.4 / 4)² = 0.01.
    # q1: empty mask -> (0 + 1)² = 1; balance (−1.4 / 4)² = 0.1225.
    per_query = hag_loss(H_ADV, H_CLEAN, t=0.5, beta=1.0, reduction="none")
    torch.testing.assert_close(per_query, torch.tensor([1.8056, 1.1225], dtype=torch.float64))
    torch.testing.assert_close(hag_loss(H_ADV, H_CLEAN), torch.tensor(1.46405, dtype=torch.float64))
    torch.testing.assert_close(
        hag_loss(H_ADV, H_CLEAN, beta=2.0, reduction="none"),
        torch.tensor([1.7956 + 0.02, 1.0 + 0.245], dtype=torch.float64),
    )


def test_hag_loss_gradient_by_hand():
    # d/dh'_k: 2(S + 1)·m_k·h_k / Σm + 2β·mean(h') / K, then / Q for the batch mean; the mask
    # is a constant. q0: 1.34·m·h + 0.05; q1: 0 + 2·(−0.35)/4 = −0.175.
    h = H_ADV.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hag_loss(h, H_CLEAN), h)
    expected = torch.tensor(
        [[1.072 + 0.05, 0.05, 0.05, -1.34 + 0.05], [-0.175, -0.175, -0.175, -0.175]],
        dtype=torch.float64,
    ) / 2
    torch.testing.assert_close(g, expected)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _distance_loop(h: list[float], r: list[float]) -> float:
    """D of SPEC §7 summed bit by bit, straight from the formula."""
    return 0.5 * sum(abs(a - b) * _sigmoid(5 * a * b) for a, b in zip(h, r, strict=True)) + sum(
        1 - _sigmoid(5 * a * b) for a, b in zip(h, r, strict=True)
    )


def test_sdha_distance_by_hand():
    h = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    r = torch.tensor([[1, 1], [-1, 1]], dtype=torch.int8)
    s, t = _sigmoid(2.5), _sigmoid(-2.5)
    # r = (1, 1): ½(0.5·σ(2.5) + 1.5·σ(−2.5)) + (1 − σ(2.5)) + (1 − σ(−2.5))
    # r = (−1, 1): ½(1.5·σ(−2.5) + 1.5·σ(−2.5)) + 2(1 − σ(−2.5))
    expected = torch.tensor([[0.5 * (0.5 * s + 1.5 * t) + 1.0, 1.5 * t + 2 * (1 - t)]],
                            dtype=torch.float64)
    torch.testing.assert_close(sdha_distance(h, r), expected)
    assert abs(expected[0, 0].item() - 1.287929) < 1e-5


def test_sdha_distance_matches_bitwise_formula_on_random_codes():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(5, 7, generator=g, dtype=torch.float64) * 2.4 - 1.2  # also |h'| > 1
    r = torch.randint(0, 2, (9, 7), generator=g) * 2 - 1
    d = sdha_distance(h, r)
    for i in range(5):
        for j in range(9):
            assert d[i, j].item() == pytest.approx(_distance_loop(h[i].tolist(), r[j].tolist()),
                                                   rel=1e-12)


def test_sdha_weights_by_hand():
    h = torch.tensor([[0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[1, 1], [-1, 1], [1, -1]], dtype=torch.int8)  # d_H = 1, 2, 0
    w = sdha_weights(h, r)
    assert not w.requires_grad
    torch.testing.assert_close(
        w, torch.tensor([[1.0, 2 ** -0.5, 1e4]], dtype=torch.float64), rtol=1e-7, atol=0)


def test_sdha_surrogate_masked_mean_and_fallback():
    h = torch.tensor([[0.3, -0.8, 0.1], [-0.6, 0.2, 0.9]], dtype=torch.float64)
    codes = torch.tensor([[1, 1, 1], [-1, 1, -1], [1, -1, 1]], dtype=torch.int8)
    relevant = torch.tensor([[True, False, True], [False, False, False]])
    own = torch.tensor([[1, -1, 1], [-1, -1, 1]], dtype=torch.int8)

    def wd(hq, r):
        b = [1 if v >= 0 else -1 for v in hq]
        d_h = sum(x != y for x, y in zip(b, r, strict=True))
        return (d_h + 1e-8) ** -0.5 * _distance_loop(hq, r)

    q0 = (wd(h[0].tolist(), [1, 1, 1]) + wd(h[0].tolist(), [1, -1, 1])) / 2
    q1 = wd(h[1].tolist(), [-1, -1, 1])  # no relevant code: the query's own clean code
    torch.testing.assert_close(sdha_surrogate(h, codes, relevant, own),
                               torch.tensor([q0, q1], dtype=torch.float64))


@pytest.mark.parametrize("steps", [1, 3, 5, 7, 10, 13, 25, 100, 1500, 2000])
def test_alpha_schedule_follows_saat(steps):
    # SAAT's get_alpha: alpha[int(cur_epoch / (epochs / 10))]
    expected = [ALPHA_SCHEDULE[int(i / (steps / 10))] for i in range(steps)]
    assert alpha_schedule(steps) == expected


def test_alpha_schedule_paper_and_ten_steps():
    assert alpha_schedule(5) == [0.1, 0.1, 0.1, 0.3, 0.7]
    assert alpha_schedule(10) == list(ALPHA_SCHEDULE)


def test_sdha_surrogate_gradient_matches_direct_formula():
    """The factorised surrogate has the gradient of the literal per-pair formula (w constant)."""
    g = torch.Generator().manual_seed(1)
    h = (torch.rand(4, 6, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    codes = torch.randint(0, 2, (7, 6), generator=g) * 2 - 1
    relevant = torch.rand(4, 7, generator=g) < 0.5
    relevant[3] = False  # falls back to its own code
    own = torch.randint(0, 2, (4, 6), generator=g) * 2 - 1
    (got,) = torch.autograd.grad(sdha_surrogate(h, codes, relevant, own).sum(), h)

    total = 0
    for i in range(4):
        rows = codes[relevant[i]] if relevant[i].any() else own[i : i + 1]
        terms = []
        for r in rows.double():
            d = (0.5 * ((h[i] - r).abs() * torch.sigmoid(5 * h[i] * r)).sum()
                 + (1 - torch.sigmoid(5 * h[i] * r)).sum())
            b = torch.where(h[i] >= 0, 1.0, -1.0).double()
            w = ((b != r).sum().double() + 1e-8) ** -0.5
            terms.append(w * d)
        total = total + torch.stack(terms).mean()
    (expected,) = torch.autograd.grad(total, h)
    torch.testing.assert_close(got, expected)
