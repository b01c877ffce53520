"""Gradient-masking checks of classification reports: accuracy at ε = 1 against chance,
exactly-zero input gradients (counted independently with torch.autograd.grad), the Square
cross-check on a real tiny run, PGD's named presets and which rules have a feedback path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import copy_run
from typer.testing import CliRunner

from retrieval_bio.attacks import PGD
from retrieval_bio.attacks.pgd import PRESETS
from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError
from retrieval_bio.datasets import load
from retrieval_bio.eval.robustness import input_gradient_zeros, sweep_classify
from retrieval_bio.rules import has_feedback_path
from retrieval_bio.workflows import attack_run, check_attack_options

pytestmark = pytest.mark.usefixtures("one_thread")
C = 10  # digits classes


class Round(nn.Module):
    """Rounds pixels to {0, 1}: autograd's gradient of torch.round is exactly zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)


class Shift(nn.Module):
    """relu(x − 0.5): the input gradient is exactly zero wherever a pixel is <= 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x - 0.5)


@pytest.fixture(scope="module")
def digits():
    return load("digits", image_size=8, seed=0)


def trained(digits, *front: nn.Module, steps: int = 150) -> nn.Module:
    """A linear classifier (after ``front``) trained full-batch with Adam on digits."""
    torch.manual_seed(0)
    model = nn.Sequential(*front, nn.Flatten(), nn.Linear(3 * 8 * 8, C))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = digits.train.images, digits.train.labels.argmax(1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def linear(digits):
    return trained(digits)


@pytest.fixture(scope="module")
def rounding(digits):
    return trained(digits, Round())


def query_tensors(digits) -> tuple[torch.Tensor, torch.Tensor]:
    items = [digits.query[i] for i in range(len(digits.query))]
    return torch.stack([x for x, _, _ in items]), torch.stack([y for _, y, _ in items])


def test_plain_linear_classifier_falls_to_chance_without_zero_gradients(digits, linear):
    rep = sweep_classify(linear, "pgd", [0.0, 0.3, 1.0], queries=digits.query,
                         grads=("exact",), batch_size=256)
    x, y = query_tensors(digits)
    # independent: attack the whole query set ourselves and count correct argmaxes
    adv = PGD(linear, 1.0, grad="exact")(x, y)
    with torch.no_grad():
        acc = float((linear(adv).argmax(1) == y.argmax(1)).double().mean())
    assert acc <= 1.5 / C
    m = rep["masking"]
    assert m["chance"] == pytest.approx(1 / C) and m["max_eps"] == 1.0
    assert m["at_max_eps"] == {"exact": pytest.approx(acc, abs=1e-12)}
    assert m["falls_to_chance"] is True
    assert m["zero_grad_fraction"] == {"exact": 0.0} and m["zero_grad_images"] == {"exact": 0.0}
    assert not any("chance" in n or "exactly zero" in n for n in rep["notes"])
    assert rep["clean_accuracy"] > 0.8  # a real classifier, not one at chance already


def test_zero_gradient_model_is_flagged_as_masking(digits, rounding):
    rep = sweep_classify(rounding, "pgd", [0.0, 1.0], queries=digits.query,
                         grads=("exact", "model"), same_grads=True, rule="pepita")
    m = rep["masking"]
    assert m["zero_grad_fraction"] == {"exact": 1.0}  # one column: one computation
    assert m["zero_grad_images"] == {"exact": 1.0}
    # PGD gets no signal: the images do not move and accuracy stays at the clean one
    assert rep["accuracy"]["exact"] == [rep["clean_accuracy"]] * 2
    assert rep["clean_accuracy"] > 1.5 / C
    assert m["falls_to_chance"] is False
    blind = [n for n in rep["notes"] if "does not fall to chance" in n]
    zero = [n for n in rep["notes"] if "exactly zero" in n]
    assert len(blind) == 1 and "gradient masking" in blind[0] and "Square" in blind[0]
    assert len(zero) == 1 and "100.0%" in zero[0]  # said once for the shared computation
    same = [n for n in rep["notes"] if "same computation" in n]
    assert same == ["exact and model gradients are the same computation for this model (rule "
                    "pepita has no feedback path): attacked once with 'exact'"]
    assert rep["grad"] == ["exact"] and rep["same_computation"] == {"model": "exact"}


def test_largest_eps_below_one_cannot_tell(digits, linear):
    rep = sweep_classify(linear, "fgsm", [0.0, 0.1], queries=digits.query, grads=("exact",))
    assert rep["masking"]["falls_to_chance"] is None and rep["masking"]["max_eps"] == 0.1
    assert any("largest ε is 0.1 < 1" in n and "add 1.0 to --eps" in n for n in rep["notes"])


def test_zero_gradient_fraction_matches_a_hand_count(digits):
    model = trained(digits, Shift(), steps=60)
    x, y = query_tensors(digits)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y.argmax(1)), xr)
    hand = float((g == 0).double().mean())
    hand_images = float((g == 0).flatten(1).all(1).double().mean())
    assert 0.05 < hand < 1.0  # some entries are zero, not all
    rep = sweep_classify(model, "fgsm", [0.0, 1.0], queries=digits.query, grads=("exact",),
                         batch_size=len(x))  # one batch, as above
    assert rep["masking"]["zero_grad_fraction"]["exact"] == pytest.approx(hand, abs=1e-12)
    assert rep["masking"]["zero_grad_images"]["exact"] == pytest.approx(hand_images,
                                                                        abs=1e-12)
    assert input_gradient_zeros(model, digits.query, "model", batch_size=len(x)) == \
        pytest.approx((hand, hand_images), abs=1e-12)
    assert any("exactly zero" in n for n in rep["notes"])
    # Square is gradient-free: its block measures the exact gradient only
    sq = sweep_classify(model, "square", [0.0, 0.1], queries=digits.query, steps=5,
                        batch_size=len(x))
    assert sq["masking"]["zero_grad_fraction"] == {"exact": pytest.approx(hand, abs=1e-12)}
    assert set(sq["masking"]["at_max_eps"]) == {"none"}


def test_resumed_sweep_gives_the_uninterrupted_masking_block(digits, linear):
    kw = dict(queries=digits.query, grads=("exact", "model"), batch_size=256)
    whole = sweep_classify(linear, "pgd", [0.0, 0.5, 1.0], **kw)
    seen: list[dict] = []

    def stop_after_two(rep):
        seen.append(json.loads(json.dumps(rep)))  # what a run folder would hold
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_classify(linear, "pgd", [0.0, 0.5, 1.0], on_update=stop_after_two, **kw)
    partial = seen[-1]
    assert partial["complete"] is False and partial["masking"]["falls_to_chance"] is None
    done = sweep_classify(linear, "pgd", [0.0, 0.5, 1.0], previous=partial, **kw)
    assert done["masking"] == whole["masking"] and done["accuracy"] == whole["accuracy"]


def test_pgd_presets(digits, linear):
    x, y = query_tensors(digits)
    x, y = x[:64], y[:64]
    preset = PGD(linear, 0.3, preset="pepita", seed=4)
    explicit = PGD(linear, 0.3, alpha=0.1, steps=40, random_start=True, seed=4)
    assert torch.equal(preset(x, y), explicit(x, y))  # bit for bit
    assert (preset.steps, preset.alpha, preset.random_start) == (40, 0.1, True)
    paper = PGD(linear, 0.3, preset="paper")
    default = PGD(linear, 0.3)
    assert (paper.steps, paper.alpha, paper.random_start) == (5, 0.3 / 3, False)  # α = ε/3
    assert (default.steps, default.alpha, default.random_start) == (5, 0.3 / 3, False)
    assert PRESETS["paper"]["alpha"] is None
    mixed = PGD(linear, 0.3, preset="pepita", steps=3, alpha=0.05, random_start=False)
    assert (mixed.steps, mixed.alpha, mixed.random_start) == (3, 0.05, False)  # explicit wins
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        PGD(linear, 0.3, preset="nope")
    # the CLI side: pgd takes paper | pepita, pepita's default sweep reaches ε = 1
    opts = dict(grads=("exact",), steps=None, max_queries=None, batch_size=8)
    assert check_attack_options("pgd", None, preset="pepita", **opts) == \
        [0.0, 0.1, 0.2, 0.3, 0.5, 1.0]
    assert check_attack_options("pgd", None, preset="paper", **opts)[-1] == 0.5
    # seed 002 (ep.md §2.2): PGD-20 of step ε/8 from x, at the budgets its code ran
    ep = PGD(linear, 0.02154, preset="ep")
    assert (ep.steps, ep.alpha, ep.random_start) == (20, 0.02154 / 8, False)
    assert check_attack_options("pgd", None, preset="ep", **opts) == \
        [0.0, 0.00464, 0.01, 0.02154, 0.03137, 0.1, 1.0]
    with pytest.raises(ConfigError, match="not a preset of pgd; choose paper or pepita or ep"):
        check_attack_options("pgd", None, preset="reference", **opts)
    with pytest.raises(ConfigError, match="--preset applies to .* not 'fgsm'"):
        check_attack_options("fgsm", None, preset="pepita", **opts)
    rep = sweep_classify(linear, "pgd", [0.3], queries=digits.query, grads=("exact",),
                         preset="pepita", steps=2)
    assert rep["preset"] == "pepita" and rep["steps"] == 2  # explicit steps beat the preset


def test_has_feedback_path():
    assert has_feedback_path("bp") is False
    assert has_feedback_path("frsf") is True and has_feedback_path("fa") is True
    assert has_feedback_path("pepita") is False  # a learner that is not a feedback rule


def test_square_cross_check_in_a_run_folder(tiny_run, tmp_path):
    run = copy_run(tiny_run("classify", "bp"), tmp_path / "bp")
    kw = dict(max_queries=30, device="cpu", plot=False, grads=("exact", "model"))
    alone = attack_run(run, "pgd", [0.0, 0.3], steps=2, **kw)
    assert "square_check" not in alone
    assert any("no Square (gradient-free) report" in n and "--num-images 30" in n
               for n in alone["notes"])
    assert sum("same computation" in n and "rule bp" in n for n in alone["notes"]) == 1
    assert "masking" in alone and alone["masking"]["falls_to_chance"] is None

    square = attack_run(run, "square", [0.0, 0.3, 0.5], steps=20, **kw)
    (check,) = square["gradient_checks"]
    assert check["attack"] == "pgd" and check["report"] == alone["path"]
    assert check["eps"] == [0.0, 0.3]
    assert check["square"] == square["accuracy"]["none"][:2]
    # the same PGD command again reads its cells and now cross-checks the new Square report
    again = attack_run(run, "pgd", [0.0, 0.3], steps=2, **kw)
    assert again["square_check"]["report"] == square["path"]
    assert not any("no Square (gradient-free) report" in n for n in again["notes"])
    assert json.loads(Path(again["path"]).read_text())["square_check"] == again["square_check"]
    assert check["gradient"] == {"exact": alone["accuracy"]["exact"]}
    assert set(square["masking"]["zero_grad_fraction"]) == {"exact"}

    # A forged Square report of the same weights that does far better than PGD at ε = 0.005
    # (where 1-step PGD leaves accuracy well above 0) ...
    forged = json.loads(Path(square["path"]).read_text())
    forged.update(eps=[0.0, 0.005], accuracy={"none": [forged["clean_accuracy"], 0.0]})
    (run / "attack-square-forged.json").write_text(json.dumps(forged))
    # ... and one of other weights sharing more ε, which must be ignored
    stale = {**forged, "weights": {**forged["weights"], "sha256": "0" * 64},
             "eps": [0.0, 0.005, 0.01], "accuracy": {"none": [0.0] * 3}}
    (run / "attack-square-stale.json").write_text(json.dumps(stale))
    pgd = attack_run(run, "pgd", [0.0, 0.005, 0.01], steps=1, **kw)
    sc = pgd["square_check"]
    assert sc == {"report": str(run / "attack-square-forged.json"), "eps": [0.0, 0.005],
                  "square": [forged["clean_accuracy"], 0.0],
                  "gradient": {"exact": pgd["accuracy"]["exact"][:2]}}
    a = pgd["accuracy"]["exact"][1]
    assert a > 0.1
    warned = [n for n in pgd["notes"] if "gradient attack is weaker" in n]
    assert warned == [f"at ε=0.005 Square's accuracy 0 is below pgd's (exact gradient) {a:.3g}: "
                      f"gradient masking: the gradient attack is weaker than a gradient-free "
                      f"one"]  # BP: one note for the shared exact/model computation
    assert json.loads(Path(pgd["path"]).read_text())["square_check"] == sc

    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "masking: accuracy at ε=0.3 falls to chance (0.1): unknown (largest ε < 1)" in \
        result.output
    assert "zero input gradients: exact 0.0% of entries" in result.output
