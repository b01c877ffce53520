"""Whole runs of the new learners through `retrieval-bio train`: PEPITA and its BP baseline
learn digits far above chance; a rule that cannot drive a model is a one-line error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.runs import read_json
from retrieval_bio.train import open_run

#: seed 000's protocol at CPU size: mlp on grey 28 px digits, SGD momentum 0.9, batch 64,
#: multistep x0.1, MSE through the softmax
COMMON = ["--backbone", "mlp", "--model-opt", "grey=true", "--model-opt", "hidden=[64]",
          "--image-size", "12", "--optimizer", "sgd", "--weight-decay", "0", "--batch-size",
          "64", "--epochs", "12", "--schedule", "multistep", "--milestones", "10",
          "--loss", "mse-softmax"]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("learners")
    out = {}
    for rule, lr in (("pepita", "0.1"), ("bp", "0.3")):
        r, text = invoke("train", "--rule", rule, *COMMON, "--lr-backbone", lr, "--lr-head",
                         lr, "--out", root / rule)
        assert r.exit_code == 0, text
        out[rule] = root / rule
    return out


@pytest.mark.parametrize("rule", ["pepita", "bp"])
def test_pepita_and_bp_learn_digits_far_above_chance(runs, rule):
    metrics = read_json(runs[rule] / "metrics.json")
    assert metrics["test_accuracy"] > 0.6  # chance: 0.1
    assert metrics["rule"] == rule and metrics["optimizer"] == "sgd"
    assert metrics["schedule"] == {"name": "multistep", "milestones": [10], "gamma": 0.1}
    lrs = [h["lr"][0] for h in metrics["history"]]
    assert lrs[9] == pytest.approx(float(COMMON and (0.1 if rule == "pepita" else 0.3)))
    assert lrs[10] == pytest.approx(lrs[9] * 0.1)
    if rule == "pepita":
        assert metrics["learner"]["f_shape"] == [144, 10]


def test_a_pepita_run_reopens_with_its_model(runs):
    run = open_run(runs["pepita"])
    assert run.config.rule == "pepita" and run.model.backbone.name == "mlp"
    assert run.model.backbone.net.in_features == 144  # one grey channel of 12 x 12


@pytest.mark.parametrize("args,message", [
    (["--rule", "pepita", "--backbone", "small-cnn"],
     "rule 'pepita' cannot train backbone 'small-cnn'.*use --backbone mlp"),
    (["--rule", "pepita", "--backbone", "mlp", "--task", "hash"], "trains classifiers"),
    (["--rule", "pepita", "--backbone", "mlp", "--learner-opt", "eta=1"],
     "learner_options 'eta': rule 'pepita' takes output_error, f_scale"),
    (["--backbone", "mlp", "--model-opt", "width=3"], "backbone 'mlp' has no option 'width'"),
    (["--backbone", "small-cnn", "--model-opt", "hidden=[3]"],
     "backbone 'small-cnn' has no option 'hidden'; it takes none"),
    (["--schedule", "multistep"], "needs milestones"),
    (["--milestones", "6,x"], "--milestones takes whole numbers"),
    (["--nesterov"], "nesterov: true needs optimizer: sgd"),
    (["--select", "adversarial"], "needs a val_attack"),
    (["--adv-train", "square"], "adv_train='square' is not valid"),
    (["--adv-train", "hag", "--backbone", "mlp"], "adv_train 'hag' cannot train a classify"),
    (["--rule", "hebbian"],
     "rule='hebbian' is not valid; choose one of bp, fa, usf, frsf, brsf, ep, krotov, pepita"),
    (["--rule", "ep", "--backbone", "small-cnn"],
     "rule 'ep' cannot train backbone 'small-cnn'.*use --backbone ep-small"),
    (["--backbone", "small-cnn", "--t-eval", "5"], "t_eval: dynamics settings of energy-based"),
    (["--backbone", "ep-small", "--rule", "ep", "--layer-lrs", "0.1"],
     "layer_lrs has 1 rates but backbone 'ep-small' has 2 layers"),
    (["--backbone", "ep-small", "--rule", "ep", "--learner-opt", "estimator=two"],
     "estimator must be one of symmetric, one_sided, random_sign"),
    (["--backbone", "ep-small", "--rule", "ep", "--image-size", "2"], "vanishes at layer"),
])
def test_wrong_combinations_are_one_line_errors(tmp_path, args, message):
    import re

    r, text = invoke("train", *args, "--epochs", "1", "--out", tmp_path / "r")
    assert r.exit_code == 2, text
    assert re.search(message, text), text
    assert "Traceback" not in text
    assert not (tmp_path / "r").exists()  # nothing half-made was left behind
