"""End-to-end runs through the one trainer: BP pre-training on digits, fine-tuning with
every rule, hashing with HyP², exact resume of a rule-converted run, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CtrlCAt
from typer.testing import CliRunner

from retrieval_bio import rules
from retrieval_bio.cli import app
from retrieval_bio.config import RunConfig
from retrieval_bio.eval import map_at_k
from retrieval_bio.eval.report import load_codes
from retrieval_bio.runs import CHECKPOINT, RunFolderError, load_checkpoint, read_json
from retrieval_bio.train import load_run, train_run
from retrieval_bio.workflows import evaluate_run

SIZE = 16  # digits are 8x8; 16 px keeps these runs to seconds


def _cfg(tmp, name, **kw):
    base = dict(stage="finetune", backbone="small-cnn", dataset="digits", image_size=SIZE,
                batch_size=32, lr_backbone=1e-3, lr_head=1e-3, out=str(tmp / name))
    return RunConfig.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    return train_run(_cfg(tmp, "bp", stage="pretrain", epochs=4))


def test_pretraining_lowers_the_loss_and_beats_chance(pretrained):
    hist = pretrained.metrics["history"]
    losses = [h["loss"] for h in hist]
    assert losses[-1] < 0.5 * losses[0]
    assert pretrained.metrics["val_accuracy"] > 0.5  # chance is 0.1 on 10 balanced classes
    assert pretrained.metrics["test_accuracy"] > 0.5
    for name in ("config.yaml", "metrics.json", "checkpoint.pt", "best.pt"):
        assert (pretrained.run_dir / name).is_file()
    assert RunConfig.load(pretrained.run_dir / "config.yaml") == pretrained.config


@pytest.mark.parametrize("rule", rules.RULES)
def test_finetuning_with_each_rule_keeps_accuracy(pretrained, tmp_path, rule):
    """A new classifier head on the BP-pretrained backbone, all parameters trained with the
    rule: validation accuracy ends at least where the pretrained model was, less 3 points."""
    base = pretrained.metrics["val_accuracy"]
    res = train_run(_cfg(tmp_path, rule, rule=rule, epochs=3, init=str(pretrained.run_dir),
                         lr_backbone=1e-4))
    assert res.metrics["val_accuracy"] >= base - 0.03, (rule, base, res.metrics)
    if rule != "bp":
        diag = res.metrics["history"][-1]["diagnostics"]
        angles = np.array(list(diag["feedback_angle_deg"].values()))
        assert ((angles >= 0) & (angles <= 180)).all()
        if rule != "fa":  # sign(W) always lies within 90 degrees of W; FA's random R need not
            assert (angles < 90).all()
        assert set(diag["feedback_angle_deg"]) == set(rules.converted_layers(res.model))


def test_hash_finetune_writes_codes_that_beat_random(pretrained, tmp_path):
    res = train_run(_cfg(tmp_path, "hash", task="hash", rule="frsf", bits=16, epochs=3,
                         init=str(pretrained.run_dir), lr_backbone=1e-4))
    codes = load_codes(res.run_dir / "codes.npz")
    assert codes["query_codes"].dtype == np.int8
    assert set(np.unique(codes["query_codes"])) <= {-1, 1}
    assert codes["query_codes"].shape == (len(res.splits.query), 16)
    # the reported mAP is the one the codes give (an independent recomputation)
    args = (codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"])
    assert res.metrics["map@k"] == pytest.approx(map_at_k(*args, 0))
    rng = np.random.default_rng(0)
    random_map = map_at_k(np.where(rng.random(codes["query_codes"].shape) < .5, 1, -1),
                          np.where(rng.random(codes["db_codes"].shape) < .5, 1, -1),
                          codes["query_labels"], codes["db_labels"], 0)
    assert res.metrics["map@k"] > random_map + 0.3
    # evaluate re-derives the same mAP and adds the rest of SPEC §5
    report = evaluate_run(res.run_dir)
    assert report["map@k"] == pytest.approx(res.metrics["map@k"])
    assert 0 < report["precision@h<=2"] <= 1
    assert (res.run_dir / "pr_curve.png").is_file()
    # load_run rebuilds the same converted model (M buffers included)
    _, model, splits = load_run(res.run_dir)
    x = torch.stack([splits.query[i][0] for i in range(8)])
    assert np.array_equal(model.codes(x).numpy(), codes["query_codes"][:8])


def test_brsf_run_resumes_to_the_same_weights(pretrained, tmp_path):
    """brSF redraws M after every step, so this also checks that M's state is restored."""
    kw = dict(rule="brsf", epochs=2, init=str(pretrained.run_dir))
    ref = train_run(_cfg(tmp_path, "ref", **kw))

    with pytest.raises(KeyboardInterrupt):  # 31 steps per epoch: Ctrl-C mid second epoch
        train_run(_cfg(tmp_path, "run", **kw), step_hooks=[CtrlCAt(40)])
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["global_step"] == 40
    with pytest.raises(RunFolderError, match="--resume"):
        train_run(_cfg(tmp_path, "run", **kw))
    res = train_run(_cfg(tmp_path, "run", **kw), resume=True)
    # the resumed epoch logs the loss of the whole epoch, not of its second half only
    assert res.metrics["history"][1]["loss"] == pytest.approx(ref.metrics["history"][1]["loss"])
    ref_state, state = ref.model.state_dict(), res.model.state_dict()
    assert ref_state.keys() == state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], state[k]), k
    assert res.metrics["test_accuracy"] == ref.metrics["test_accuracy"]


def test_cli_pretrain_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["pretrain", "--backbone", "small-cnn", "--image-size", "8",
                            "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_json(out / "metrics.json")["stage"] == "pretrain"
    r = runner.invoke(app, ["pretrain", "--backbone", "small-cnn", "--out", str(out)])
    assert r.exit_code == 2 and "--resume" in r.output
    r = runner.invoke(app, ["finetune", "--rule", "hebbian", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "rule='hebbian'" in r.output
    r = runner.invoke(app, ["finetune", "--backbone", "small-cnn", "--init",
                            str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "missing" in r.output
    for cmd in ([], ["pretrain"], ["finetune"], ["evaluate"]):
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output
