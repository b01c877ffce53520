"""Whole EP runs: `retrieval-bio train --rule ep` learns digits, resumes bit-identically
after a mid-epoch Ctrl-C, and its attacks differentiate the unroll they are asked for."""

from __future__ import annotations

import pytest
import torch
from helpers import PNG_SIGNATURE, CtrlCAt
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import RunConfig
from retrieval_bio.runs import CHECKPOINT, load_checkpoint, read_json
from retrieval_bio.train import open_run, train_run
from retrieval_bio.workflows import attack_run

#: seed 002's optimiser (SGD momentum 0.9, coupled weight decay 3e-4, per-layer rates, cosine
#: to 1e-5) on the small preset: 16-px digits
EP = dict(stage="train", rule="ep", backbone="ep-small", dataset="digits", image_size=16,
          optimizer="sgd", momentum=0.9, weight_decay=3e-4, layer_lrs=[0.2, 0.1],
          lr_head=0.05, schedule="cosine", lr_min=1e-5, batch_size=32, amp=False,
          device="cpu")


@pytest.fixture(scope="module")
def ep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep") / "run"
    train_run(RunConfig(**EP, epochs=3, out=str(out)))
    return out


def test_ep_learns_digits_with_per_layer_rates_and_cosine(ep_run):
    metrics = read_json(ep_run / "metrics.json")
    assert metrics["test_accuracy"] > 0.5  # chance 0.1; about 0.9 measured
    assert metrics["learner"] == {"learner": "ep", "estimator": "symmetric"}
    lrs = [h["lr"] for h in metrics["history"]]
    assert lrs[0] == pytest.approx([0.2, 0.1, 0.05])  # conv1, conv2, readout
    assert lrs[1][0] == pytest.approx(1e-5 + (0.2 - 1e-5) * 0.75)  # cos(π/3) schedule
    run = open_run(ep_run)
    assert run.model.backbone.net.t_eval == 40 and run.config.t_eval is None


def test_ep_resumes_bit_identically_after_ctrl_c(tmp_path):
    cfg = dict(EP, epochs=2, seed=1)
    ref = train_run(RunConfig(**cfg, out=str(tmp_path / "ref")))
    with pytest.raises(KeyboardInterrupt):
        train_run(RunConfig(**cfg, out=str(tmp_path / "run")), step_hooks=[CtrlCAt(40)])
    resumed = train_run(RunConfig(**cfg, out=str(tmp_path / "run")), resume=True)
    a = load_checkpoint(ref.run_dir / CHECKPOINT)["model"]
    b = load_checkpoint(resumed.run_dir / CHECKPOINT)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_short_unroll_attacks_weaker_than_a_long_one(ep_run, tmp_path):
    acc = {}
    for t in (2, 30):
        rep = attack_run(ep_run, "pgd", [0.1], grads=["exact"], steps=10, max_queries=100,
                         t_attack=t, out_dir=tmp_path, plot=False)
        assert rep["t_attack"] == t and rep["t_eval"] == 40 and rep["settings"]["t_attack"] == t
        acc[t] = rep["accuracy"]["exact"][0]
    # seed 002 Fig. 4b / ep.md §3.4: an unroll shorter than the relaxation under-attacks
    assert acc[2] > acc[30] + 0.05, acc


def test_ep_reports_exact_and_model_columns_and_the_t_sweep_plots(ep_run, tmp_path):
    r = CliRunner().invoke(app, ["attack", "fgsm", str(ep_run), "--eps", "0,0.1", "--num-images",
                                 "40", "--t-attack", "3,12", "--report-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "fgsm vs t_attack" in r.output
    sweep_file = next(tmp_path.glob("tsweep-fgsm-*.json"))
    sweep = read_json(sweep_file)
    assert sweep["t_attack"] == [3, 12] and sweep["grad"] == ["exact", "model"]
    assert sweep_file.with_suffix(".png").read_bytes().startswith(PNG_SIGNATURE)
    one = read_json(sweep["reports"][0])
    assert one["same_computation"] == {}  # EP's own estimate is another computation
    for g in ("exact", "model"):
        assert one["accuracy"][g][0] == one["clean_accuracy"]  # ε = 0
        assert sweep["accuracy"][g]["0.1"] == [read_json(p)["accuracy"][g][1]
                                               for p in sweep["reports"]]


def test_t_attack_on_a_run_without_dynamics_is_a_one_line_error(tiny_run):
    r = CliRunner().invoke(app, ["attack", "pgd", str(tiny_run("classify", "bp")),
                                 "--t-attack", "5"])
    assert r.exit_code == 2
    assert "--t-attack applies to energy-based runs" in r.output
    assert "Traceback" not in r.output
