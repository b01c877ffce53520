"""sign(0) = +1 in feedback matrices (SPEC §1's convention), and the norm scale stays exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from retrieval_bio import rules


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_zero_weights_feed_back_plus_one_and_norm_matches(rule):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5))
    with torch.no_grad():
        net[0].weight[:, :2] = 0.0  # pruned inputs: exact zeros
    rules.convert(net, rule, seed=3)
    layer = net[0]
    b = rules.feedback(layer)
    w = layer.weight.detach()
    magnitude = layer.M if rule != "usf" else torch.ones_like(w)
    sign = torch.where(w >= 0, 1.0, -1.0)  # the oracle: sign(0) = +1
    expected = magnitude * sign * w.norm() / (magnitude * sign).norm()
    torch.testing.assert_close(b, expected, rtol=1e-6, atol=1e-7)
    assert (b[:, :2] > 0).all()
    torch.testing.assert_close(b.norm(), w.norm())
