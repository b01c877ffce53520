"""L2 sweeps and the AutoAttack-style ``auto`` report: option checks, the L2 masking
threshold sqrt(C·H·W), the per-part breakdown, and cross-checks that never mix norms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import copy_run

from retrieval_bio.config import ConfigError
from retrieval_bio.datasets import load
from retrieval_bio.eval.robustness import L2_EPS, default_eps, full_eps, sweep_classify
from retrieval_bio.workflows import attack_run, check_attack_options

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load("digits", image_size=8, seed=0)


@pytest.fixture(scope="module")
def linear(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = digits.train.images, digits.train.labels.argmax(1)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def options(attack: str, eps, norm: str):
    return check_attack_options(attack, eps, grads=("exact",), steps=None, preset=None,
                                max_queries=None, batch_size=8, norm=norm)


def test_norm_options():
    assert options("pgd", [0.5, 3.0, 20.0], "l2") == [0.5, 3.0, 20.0]  # L2 may exceed 1
    with pytest.raises(ConfigError, match=r"\[0, 1\] for --norm linf.*pass --norm l2"):
        options("pgd", [0.5, 3.0], "linf")
    with pytest.raises(ConfigError, match="finite and >= 0"):
        options("auto", [-1.0], "l2")
    with pytest.raises(ConfigError, match="hag is defined for an L∞ budget only"):
        options("hag", [0.1], "l2")
    with pytest.raises(ConfigError, match="--norm must be one of linf | l2"):
        options("pgd", [0.1], "l1")
    # seed 002's L2 grid: 0, logspace(0.05, 3, 10) and 1; its tables' rounded labels
    assert options("square", None, "l2") == list(L2_EPS) == default_eps("pgd", None, "l2")
    assert len(L2_EPS) == 12 and L2_EPS[0] == 0.0 and 1.0 in L2_EPS
    assert [round(e, 4) for e in L2_EPS[1:]] == [0.05, 0.0788, 0.1242, 0.1957, 0.3085, 0.4862,
                                                 0.7663, 1.0, 1.2077, 1.9035, 3.0]
    assert full_eps("linf", (3, 32, 32)) == 1.0
    assert full_eps("l2", (3, 8, 8)) == math.sqrt(192)


def test_l2_masking_threshold_is_the_cube_diagonal(digits, linear):
    rep = sweep_classify(linear, "pgd", [0.0, 3.0], queries=digits.query, grads=("exact",),
                         norm="l2")
    assert rep["norm"] == "l2" and rep["masking"]["full_eps"] == math.sqrt(192)
    assert rep["masking"]["falls_to_chance"] is None
    assert any("largest ε is 3 < 13.86" in n and "add 13.86 to --eps" in n for n in rep["notes"])
    # the measured L2 sizes respect the budget
    assert max(rep["l2"]["exact"]) <= 3.0 + 1e-5
    rep = sweep_classify(linear, "pgd", [0.0, 13.86], queries=digits.query, grads=("exact",),
                         norm="l2", steps=10)
    assert rep["masking"]["falls_to_chance"] is True  # any image is within reach


def test_auto_report_breakdown_and_resume(digits, linear):
    kw = dict(queries=digits.query, grads=("exact",), steps=5,
              attack_kwargs={"n_queries": 20})
    rep = sweep_classify(linear, "auto", [0.0, 0.1], **kw)
    n = rep["num_queries"]
    assert rep["norm"] == "linf" and rep["queries_per_image"] == 20 and rep["steps"] == 5
    for acc, cell in zip(rep["accuracy"]["exact"], rep["breakdown"]["exact"], strict=True):
        assert sum(cell.values()) == n and cell["robust"] / n == pytest.approx(acc, abs=1e-12)
    zero, eps01 = rep["breakdown"]["exact"]
    assert zero["apgd-ce"] == zero["apgd-t"] == zero["square"] == 0
    assert eps01["apgd-ce"] > 0
    assert rep["masking"]["zero_grad_fraction"] == {"exact": 0.0}
    # a resumed sweep keeps the computed cells, breakdown included
    more = sweep_classify(linear, "auto", [0.0, 0.1, 0.2], previous=rep, **kw)
    assert more["breakdown"]["exact"][:2] == rep["breakdown"]["exact"]
    assert sum(more["breakdown"]["exact"][2].values()) == n


def test_auto_flags_images_only_square_breaks(digits, linear):
    """Behind a rounding front the input gradient is zero: APGD-CE and APGD-T are blind
    (they break only what their random starts happen to), Square is not, and the auto
    report says so."""

    class Round(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.round(x)

    masked = nn.Sequential(Round(), linear)
    rep = sweep_classify(masked, "auto", [0.0, 0.6], queries=digits.query, grads=("exact",),
                         steps=3, attack_kwargs={"n_queries": 30})
    cell = rep["breakdown"]["exact"][1]
    assert cell["square"] > 0.02 * rep["num_queries"]
    assert rep["masking"]["zero_grad_fraction"] == {"exact": 1.0}
    (note,) = [n for n in rep["notes"] if "Square (gradient-free) broke" in n]
    assert f"broke {cell['square']} of {rep['num_queries']} images" in note
    assert "gradient masking" in note and "ε=0.6" in note


def test_cross_checks_keep_norms_apart_and_skip_auto(tiny_run, tmp_path):
    run = copy_run(tiny_run("classify", "bp"), tmp_path / "bp")
    kw = dict(max_queries=20, device="cpu", plot=False, grads=("exact",))
    square = attack_run(run, "square", [0.0, 0.3], steps=10, **kw)
    assert "gradient_checks" not in square
    l2 = attack_run(run, "pgd", [0.0, 0.3], steps=2, norm="l2", **kw)
    assert l2["norm"] == "l2" and l2["settings"]["norm"] == "l2"
    assert "square_check" not in l2  # the L∞ Square report is another budget
    assert any("no Square (gradient-free) report" in n and "--norm l2" in n
               for n in l2["notes"])
    linf = attack_run(run, "pgd", [0.0, 0.3], steps=2, **kw)
    assert "norm" not in linf["settings"] and linf["key"] != l2["key"]  # separate files
    assert linf["square_check"]["report"] == square["path"]
    auto = attack_run(run, "auto", [0.0, 0.3], steps=3,
                      attack_kwargs={"n_queries": 10}, **kw)
    assert "square_check" not in auto and not any("Square (gradient-free) report" in n
                                                   for n in auto["notes"])
    again = attack_run(run, "square", [0.0, 0.3], steps=10, **kw)
    assert [c["attack"] for c in again["gradient_checks"]] == ["pgd"]
    assert again["gradient_checks"][0]["report"] == linf["path"]
