"""HyP² loss (SPEC §4) against hand-computed values and a loop-based second implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from retrieval_bio.losses import LOSSES, HyP2Loss, create_loss, hyp2_threshold


def _cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _loop_hyp2(h: list[list[float]], y: list[list[float]], p: list[list[float]],
               eps: float, beta: float) -> float:
    """Second implementation with explicit loops over (i, c) and ordered pairs i != j."""
    pos, neg, pair = [], [], []
    for i in range(len(h)):
        for c in range(len(p)):
            cos = _cos(h[i], p[c])
            if y[i][c] == 1:
                pos.append(1 - cos)
            else:
                neg.append(max(cos - eps, 0.0))
    for i in range(len(h)):
        for j in range(len(h)):
            if i == j or sum(y[i]) <= 1 or sum(y[j]) <= 1:
                continue
            if any(a == 1 and b == 1 for a, b in zip(y[i], y[j], strict=True)):
                continue
            pair.append(max(_cos(h[i], h[j]) - eps, 0.0))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return mean(pos) + mean(neg) + beta * mean(pair)


def _set_proxies(loss: HyP2Loss, p: torch.Tensor) -> None:
    with torch.no_grad():
        loss.proxies.copy_(p)


def test_hand_computed_tiny_batch() -> None:
    # K = 2, C = 4, proxies on the axes; eps = 0.25, beta = 0.5.
    loss = HyP2Loss(num_classes=4, bits=2, threshold=0.25).double()
    _set_proxies(loss, torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
    h = torch.tensor([[3.0, 0], [1, 1], [0, -2]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.float64)
    s = 1 / math.sqrt(2)
    # positives: (0,0) 1-1, (0,1) 1-0, (1,2) 1+s, (1,3) 1+s, (2,3) 1-1  -> 5 entries
    proxy_pos = (0 + 1 + 2 * (1 + s) + 0) / 5
    # negatives (7 entries): only (1,0) and (1,1) have cos = s > 0.25
    proxy_neg = 2 * (s - 0.25) / 7
    # samples 0 and 1 each have 2 labels and share none: ordered pairs (0,1), (1,0), cos = s
    pair = 0.5 * (s - 0.25)
    expected = proxy_pos + proxy_neg + pair
    assert expected == pytest.approx(1.241998, abs=1e-6)
    assert loss(h, y).item() == pytest.approx(expected, abs=1e-12)
    assert loss.pair_term(h, y).item() == pytest.approx(pair, abs=1e-12)


@pytest.mark.parametrize(("num_classes", "bits", "seed"), [(5, 16, 0), (20, 32, 1), (3, 8, 2)])
def test_matches_loop_implementation(num_classes: int, bits: int, seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)  # codes independent of the proxies
    n = 12
    loss = HyP2Loss(num_classes, bits, seed=seed).double()
    h = torch.randn(n, bits, generator=g, dtype=torch.float64)
    y = (torch.rand(n, num_classes, generator=g) < 0.3).double()
    y[0] = 0  # a row with no label at all is legal (only negatives)
    y[1] = 0
    y[1, 0] = y[1, 1] = 1
    y[2] = 0
    y[2, 2] = 1
    eps = hyp2_threshold(num_classes, bits)
    expected = _loop_hyp2(h.tolist(), y.tolist(), loss.proxies.tolist(), eps, 0.5)
    assert loss(h, y).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_threshold_from_table_and_override() -> None:
    assert HyP2Loss(100, 48).threshold == pytest.approx(1 / 12, abs=1e-9)
    assert HyP2Loss(10, 64).threshold == -0.03125
    assert HyP2Loss(10, 64, threshold=0.3).threshold == 0.3


def test_pair_term_zero_for_single_label_data() -> None:
    g = torch.Generator().manual_seed(0)
    loss = HyP2Loss(6, 16, threshold=-1.0, seed=0)  # eps = -1: any counted pair would be > 0
    h = torch.randn(30, 16, generator=g)
    y = torch.nn.functional.one_hot(torch.arange(30) % 6, 6).float()
    assert loss.pair_term(h, y).item() == 0.0
    # and it is not zero once two disjoint multi-label samples are present
    y[0, 1] = 1  # labels {0, 1}
    y[2, 3] = 1  # labels {2, 3}
    assert loss.pair_term(h, y).item() > 0.0


def test_pair_term_zero_when_every_pair_shares_a_label() -> None:
    g = torch.Generator().manual_seed(1)
    loss = HyP2Loss(6, 16, threshold=-1.0, seed=0)
    h = torch.randn(10, 16, generator=g)
    y = torch.zeros(10, 6)
    y[:, 0] = 1  # everyone has label 0 ...
    y[torch.arange(10), 1 + torch.arange(10) % 5] = 1  # ... plus one more
    assert loss.pair_term(h, y).item() == 0.0
    assert loss(h, y).item() == pytest.approx(loss.proxy_term(h, y).item())


def test_empty_positive_or_negative_set_contributes_zero() -> None:
    loss = HyP2Loss(3, 4, threshold=0.0, seed=0).double()
    h = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p = loss.proxies.detach()
    cos = torch.nn.functional.cosine_similarity(h[:, None], p[None], dim=2)
    all_on = torch.ones(5, 3, dtype=torch.float64)  # no negatives; all pairs share labels
    assert loss(h, all_on).item() == pytest.approx((1 - cos).mean().item(), abs=1e-12)
    all_off = torch.zeros(5, 3, dtype=torch.float64)  # no positives; no multi-label samples
    assert loss(h, all_off).item() == pytest.approx(cos.clamp_min(0).mean().item(), abs=1e-12)


def test_sgd_step_on_codes_moves_them_towards_their_proxies() -> None:
    g = torch.Generator().manual_seed(123)  # not the proxies' seed: codes must start off them
    c, k, n = 10, 32, 40
    loss = HyP2Loss(c, k, seed=0).double()
    targets = torch.arange(n) % c
    y = torch.nn.functional.one_hot(targets, c).double()
    h = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)

    def own_proxy_distance(codes: torch.Tensor) -> torch.Tensor:
        p = loss.proxies.detach()[targets]
        return 1 - torch.nn.functional.cosine_similarity(codes, p, dim=1)

    before = own_proxy_distance(h.detach())
    loss(h, y).backward()
    after = own_proxy_distance(h.detach() - 0.5 * h.grad)
    assert torch.all(after < before), (before - after)


def test_proxies_are_the_modules_parameters_with_their_own_group() -> None:
    loss = HyP2Loss(7, 12, proxy_lr_mult=3.0, seed=0)
    params = list(loss.parameters())
    assert len(params) == 1 and params[0] is loss.proxies
    assert isinstance(loss.proxies, nn.Parameter) and loss.proxies.shape == (7, 12)
    assert "proxies" in loss.state_dict()
    (group,) = loss.param_groups(head_lr=1e-4)
    assert group["params"][0] is loss.proxies and group["lr"] == pytest.approx(3e-4)
    head = nn.Linear(4, 12)
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": 1e-4}, *loss.param_groups(1e-4)])
    before = loss.proxies.detach().clone()
    y = torch.zeros(3, 7)
    y[:, 0] = 1
    loss(head(torch.randn(3, 4)), y).backward()
    opt.step()
    assert not torch.equal(before, loss.proxies.detach())  # proxies train


def test_proxy_init_is_kaiming_normal_fan_out_and_seeded() -> None:
    loss = HyP2Loss(9, 20, seed=5)
    ref = torch.empty(9, 20)
    nn.init.kaiming_normal_(ref, mode="fan_out", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss.proxies.detach(), ref)
    assert torch.equal(HyP2Loss(9, 20, seed=5).proxies, loss.proxies)
    assert not torch.equal(HyP2Loss(9, 20, seed=6).proxies, loss.proxies)


def test_zero_code_rows_give_finite_loss_and_gradients() -> None:
    loss = HyP2Loss(4, 8, threshold=-0.5, seed=0)
    h = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    h[1] = 0
    h[2] = 0
    h.requires_grad_(True)
    y = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0]])
    value = loss(h, y)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(h.grad).all() and torch.isfinite(loss.proxies.grad).all()
    # a zero code has cosine 0 with everything: its positive entries cost exactly 1
    assert loss.proxy_term(h[1:2].detach(), torch.tensor([[0.0, 0, 1, 1]])).item() == (
        pytest.approx(1.0 + 0.5)  # pos mean 1, neg mean relu(0 - (-0.5))
    )


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(100)
    loss = HyP2Loss(5, 6, seed=0).double()
    h = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(
        [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0],
         [0, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.float64,
    )
    p = loss.proxies.detach().clone().requires_grad_(True)
    assert loss.pair_term(h, y).item() > 0  # both terms are exercised

    def fn(codes: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
        return functional_call(loss, {"proxies": proxies}, (codes, y))

    assert torch.autograd.gradcheck(fn, (h, p), eps=1e-6, atol=1e-7)


def test_shape_errors() -> None:
    loss = HyP2Loss(4, 8, seed=0)
    with pytest.raises(ValueError, match="h must be"):
        loss(torch.randn(3, 9), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="labels must be"):
        loss(torch.randn(3, 8), torch.zeros(3, 5))


def test_registry_builds_hyp2_by_name() -> None:
    assert {"hyp2", "cross-entropy"} <= set(LOSSES.names())
    loss = create_loss("hyp2", num_classes=10, bits=64, beta=0.25, seed=0)
    assert isinstance(loss, HyP2Loss)
    assert (loss.beta, loss.threshold, loss.bits) == (0.25, -0.03125, 64)


def test_minimising_on_free_codes_separates_classes_in_hamming_space() -> None:
    # Codes as free parameters (a head that can output anything), proxies in their own group.
    c, k, n = 4, 16, 40
    loss = HyP2Loss(c, k, seed=0)
    targets = torch.arange(n) % c
    y = torch.nn.functional.one_hot(targets, c).float()
    h = nn.Parameter(torch.randn(n, k, generator=torch.Generator().manual_seed(7)))
    opt = torch.optim.Adam([{"params": [h], "lr": 5e-2}, *loss.param_groups(5e-2)])
    for _ in range(60):
        opt.zero_grad()
        loss(h, y).backward()
        opt.step()
    b = torch.where(h.detach() >= 0, 1.0, -1.0)
    hamming = (k - b @ b.T) / 2
    same = targets[:, None] == targets[None]
    # every code is nearer (in bits) to all codes of its class than to any code of another
    assert (hamming.masked_fill(~same, -1).amax(1) < hamming.masked_fill(same, k + 1).amin(1)).all()
