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
    #     balance, masked: (mean m·h')² = ((0.6 − 0.2) / 4)² = 0.01; unmasked: (mean h')² =
    #     (0.4 / 4)² = 0.01 as well (the two masked-out bits cancel).
    # q1: empty mask -> (0 + 1)² = 1; balance masked: 0; unmasked: (−1.4 / 4)² = 0.1225.
    per_query = hag_loss(H_ADV, H_CLEAN, t=0.5, beta=1.0, reduction="none")
    torch.testing.assert_close(per_query, torch.tensor([1.8056, 1.0], dtype=torch.float64))
    torch.testing.assert_close(hag_loss(H_ADV, H_CLEAN), torch.tensor(1.4028, dtype=torch.float64))
    torch.testing.assert_close(
        hag_loss(H_ADV, H_CLEAN, beta=2.0, reduction="none"),
        torch.tensor([1.7956 + 0.02, 1.0], dtype=torch.float64),
    )


def test_hag_loss_unmasked_by_hand():
    per_query = hag_loss(H_ADV, H_CLEAN, t=0.5, beta=1.0, reduction="none", balance="unmasked")
    torch.testing.assert_close(per_query, torch.tensor([1.8056, 1.1225], dtype=torch.float64))
    torch.testing.assert_close(hag_loss(H_ADV, H_CLEAN, balance="unmasked"),
                               torch.tensor(1.46405, dtype=torch.float64))
    torch.testing.assert_close(
        hag_loss(H_ADV, H_CLEAN, beta=2.0, reduction="none", balance="unmasked"),
        torch.tensor([1.7956 + 0.02, 1.0 + 0.245], dtype=torch.float64),
    )


def test_hag_loss_gradient_by_hand():
    # d/dh'_k: 2(S + 1)·m_k·h_k / Σm + 2β·mean(m·h')·m_k / K, then / Q for the batch mean; the
    # mask is a constant. q0: 1.34·m·h + 0.05·m; q1: empty mask, no gradient at all.
    h = H_ADV.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hag_loss(h, H_CLEAN), h)
    expected = torch.tensor(
        [[1.072 + 0.05, 0.0, 0.0, -1.34 + 0.05], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64,
    ) / 2
    torch.testing.assert_close(g, expected)


def test_hag_loss_unmasked_gradient_by_hand():
    # unmasked balance: + 2β·mean(h') / K on every bit. q0: 1.34·m·h + 0.05;
    # q1: 0 + 2·(−0.35)/4 = −0.175.
    h = H_ADV.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hag_loss(h, H_CLEAN, balance="unmasked"), h)
    expected = torch.tensor(
        [[1.072 + 0.05, 0.05, 0.05, -1.34 + 0.05], [-0.175, -0.175, -0.175, -0.175]],
        dtype=torch.float64,
    ) / 2
    torch.testing.assert_close(g, expected)


def _saat_hag_loop(h_adv: torch.Tensor, h_clean: torch.Tensor, t: float, beta: float,
                   balance: str) -> list[float]:
    """Per-query HAG loss bit by bit, from SAAT's ``hag_loss`` (masked) or the earlier
    toolkit form (unmasked): m_k = (sign((1 + t) − |h'_k − sign h_k|) + 1) / 2."""
    out = []
    for adv, ori in zip(h_adv.tolist(), h_clean.tolist(), strict=True):
        k = len(adv)
        mask = [(math.copysign(1.0, (1 + t) - abs(a - math.copysign(1.0, o))) + 1) / 2
                for a, o in zip(adv, ori, strict=True)]
        m = sum(mask)
        sim = sum(w * a * w * o for w, a, o in zip(mask, adv, ori, strict=True)) / (m + 1e-8)
        bal = [w * a for w, a in zip(mask, adv, strict=True)] if balance == "masked" else adv
        out.append((sim + 1) ** 2 + beta * (sum(bal) / k) ** 2)
    return out


def _random_codes(seed: int, q: int = 6, k: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h_clean = torch.rand(q, k, generator=g, dtype=torch.float64) * 2 - 1
    h_adv = torch.rand(q, k, generator=g, dtype=torch.float64) * 1.98 - 0.99
    return h_adv, h_clean


@pytest.mark.parametrize("balance", ["masked", "unmasked"])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_hag_loss_matches_loop_formula_on_random_codes(balance, beta):
    h_adv, h_clean = _random_codes(2)
    m = hag_mask(h_adv, h_clean)
    assert 0 < m.sum() < m.numel()  # some bits masked out, some not
    expected = torch.tensor(_saat_hag_loop(h_adv, h_clean, 0.5, beta, balance),
                            dtype=torch.float64)
    got = hag_loss(h_adv, h_clean, 0.5, beta, reduction="none", balance=balance)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hag_loss(h_adv, h_clean, 0.5, beta, balance=balance),
                               expected.mean(), rtol=1e-12, atol=1e-12)


def test_hag_balance_forms_differ_only_where_bits_are_masked():
    h_adv, h_clean = _random_codes(3)
    m = hag_mask(h_adv, h_clean)
    masked = hag_loss(h_adv, h_clean, reduction="none", balance="masked")
    unmasked = hag_loss(h_adv, h_clean, reduction="none", balance="unmasked")
    partial = m.sum(1) < m.shape[1]
    assert partial.any()
    assert ((masked - unmasked).abs()[partial] > 1e-6).all()
    torch.testing.assert_close(masked[~partial], unmasked[~partial], rtol=0, atol=0)

    # h' on the clean code's side of −0.5 (|h' − sign h| < 1.5): nothing is masked out
    s = torch.where(h_clean >= 0, 1.0, -1.0).double()
    h_near = s * (h_adv.abs() * 1.4 - 0.4)
    assert torch.equal(hag_mask(h_near, h_clean), torch.ones_like(h_near))
    torch.testing.assert_close(hag_loss(h_near, h_clean, reduction="none"),
                               hag_loss(h_near, h_clean, reduction="none", balance="unmasked"),
                               rtol=0, atol=0)


def test_hag_masked_balance_gradient_is_zero_on_masked_out_bits():
    """Gradient of the balance term alone (loss at β minus loss at β = 0) against its closed
    form 2β·mean_k(m·h')·m_k / (K·Q): masked-out bits get none of it."""
    h_adv, h_clean = _random_codes(4)
    beta = 0.7
    q, k = h_adv.shape
    m = hag_mask(h_adv, h_clean)
    h = h_adv.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(
        hag_loss(h, h_clean, beta=beta) - hag_loss(h, h_clean, beta=0.0), h)
    closed = 2 * beta * (m * h_adv).mean(1, keepdim=True) * m / (k * q)
    torch.testing.assert_close(got, closed, rtol=1e-12, atol=1e-15)
    assert (m == 0).any() and torch.equal(got[m == 0], torch.zeros_like(got[m == 0]))
    # the unmasked form does push masked-out bits
    (got_u,) = torch.autograd.grad(
        hag_loss(h, h_clean, beta=beta, balance="unmasked")
        - hag_loss(h, h_clean, beta=0.0, balance="unmasked"), h)
    torch.testing.assert_close(got_u, (2 * beta * h_adv.mean(1, keepdim=True) / (k * q))
                               .expand(q, k), rtol=1e-12, atol=1e-15)
    assert (got_u[m == 0] != 0).all()


def test_hag_loss_rejects_unknown_options():
    with pytest.raises(ValueError, match="balance"):
        hag_loss(H_ADV, H_CLEAN, balance="both")
    with pytest.raises(ValueError, match="reduction"):
        hag_loss(H_ADV, H_CLEAN, reduction="sum")


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
