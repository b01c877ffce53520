"""Front-end runs end to end: staged polarizing training through the shared trainer, attack
reports with the obfuscated / BPDA columns side by side, transfer attacks, HAG on a hash model
behind a front end, and `retrieval-bio diagnose`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError, RunConfig
from retrieval_bio.runs import load_checkpoint
from retrieval_bio.train import train_run
from retrieval_bio.workflows import attack_run

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

POLAR = {"backbone": "polar-cnn", "frontend": "polarizing", "dataset": "digits",
         "image_size": 16, "epochs": 3,
         "frontend_options": {"stage_epochs": [1, 1], "threshold": 0.3},
         "batch_size": 32, "lr_backbone": 2e-3, "lr_head": 2e-3, "stage": "train",
         "rule": "bp", "seed": 3}


class FrontWeights:
    """A step hook recording (stage, front-end weight) after every optimiser step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, torch.Tensor]] = []

    def __call__(self, model, opt) -> None:
        fe = model.frontend
        self.seen.append((int(fe.stage), fe.conv.weight.detach().clone()))


@pytest.fixture(scope="module")
def polar_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("frontend-runs")
    hook = FrontWeights()
    classify = train_run(RunConfig.from_dict({**POLAR, "out": str(base / "classify")}),
                         step_hooks=[hook])
    hashing = train_run(RunConfig.from_dict({**POLAR, "task": "hash", "bits": 16,
                                             "out": str(base / "hash")}))
    return classify, hashing, hook


def test_staged_training_freezes_the_front_end_and_selects_only_stage_3(polar_runs):
    result, _, hook = polar_runs
    stages = [s for s, _ in hook.seen]
    assert stages[0] == 1 and stages[-1] == 3 and set(stages) == {1, 2, 3}
    frozen = [w for s, w in hook.seen if s == 3]
    assert all(torch.equal(w, frozen[0]) for w in frozen)  # stage 3: not one update
    early = [w for s, w in hook.seen if s == 1]
    assert not torch.equal(early[0], early[-1])  # stage 1: the filters train
    history = result.metrics["history"] if "history" in result.metrics else json.loads(
        (result.run_dir / "metrics.json").read_text())["history"]
    assert [h.get("selectable", True) for h in history] == [False, False, True]
    assert result.metrics["best_epoch"] == 3
    best = load_checkpoint(result.run_dir / "best.pt")["model"]
    assert int(best["frontend.stage"]) == 3  # a reopened model runs quantised
    assert result.metrics["test_accuracy"] > 0.3  # well above chance (0.1) after 3 epochs


def test_attack_report_shows_the_obfuscated_and_bpda_columns(polar_runs):
    run = polar_runs[0].run_dir
    rep = attack_run(run, "pgd", [0.0, 0.3, 1.0], max_queries=60, steps=10, device="cpu",
                     plot=False)
    assert rep["grad"] == ["exact", "exact+bpda-identity", "exact+bpda-smooth"]
    acc = rep["accuracy"]
    clean = rep["clean_accuracy"]
    # the quantiser's true gradient is zero: the plain attack never moves a pixel
    assert acc["exact"] == [clean, clean, clean]
    assert rep["masking"]["zero_grad_fraction"]["exact"] == 1.0
    assert rep["masking"]["falls_to_chance"] is False
    for col in ("exact+bpda-identity", "exact+bpda-smooth"):
        assert acc[col][0] == clean and acc[col][2] <= 0.15  # ε = 1 reaches chance
        assert acc[col][1] < clean - 0.2
    assert any("obfuscated" in n for n in rep["notes"])


def test_transfer_from_the_run_itself_equals_the_white_box_attack(polar_runs, tmp_path):
    run = polar_runs[0].run_dir
    common = dict(max_queries=40, device="cpu", plot=False, bpda=["identity"])
    direct = attack_run(run, "fgsm", [0.1, 0.3], out_dir=tmp_path / "a", **common)
    moved = attack_run(run, "fgsm", [0.1, 0.3], out_dir=tmp_path / "b", source=run, **common)
    assert moved["accuracy"] == direct["accuracy"]
    assert moved["source"]["run"] == str(run) and "masking" not in moved
    assert moved["key"] != direct["key"]
    assert any("transfer attack" in n for n in moved["notes"])
    with pytest.raises(ConfigError, match="same task"):
        attack_run(run, "fgsm", [0.1], source=polar_runs[1].run_dir, **common)


def test_hag_on_a_hash_model_behind_the_front_end(polar_runs):
    run = polar_runs[1].run_dir
    # HAG's step follows the gradient's size, which the ℓ1-normalised conv makes small:
    # the paper's 5 steps barely move a pixel here, so more steps
    rep = attack_run(run, "hag", [0.05, 0.3], max_queries=40, steps=30, device="cpu",
                     bpda=["none", "identity"])
    assert rep["grad"] == ["exact", "exact+bpda-identity"]
    assert rep["map"]["exact"] == [rep["clean_map"]] * 2  # a zero gradient moves nothing
    assert rep["map"]["exact+bpda-identity"][1] < rep["clean_map"] - 0.05
    assert Path(rep["path"]).with_suffix(".png").is_file()


def test_diagnose_writes_layerwise_results(polar_runs, tmp_path):
    run = polar_runs[0].run_dir
    result = runner.invoke(app, ["diagnose", str(run), "--num-images", "20", "--steps", "2",
                                 "--report-dir", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "diagnostics.json").read_text())
    assert rep["attack"]["bpda"] == "identity"  # through the quantiser, not a zero gradient
    assert {"frontend.conv", "backbone.net.0", "head"} <= set(rep["psr"])
    assert rep["psr"]["frontend.conv"]["mean"]["l2"] > 0
    assert rep["spectra"]["frontend.conv"]["max"] > 0
    for name in ("psr", "snr", "sparsity", "spectra", "filter-sparsity"):
        assert (tmp_path / f"diagnose-{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["train", "--frontend-opt", "threshold=0.3"], "frontend is none"),
    (["train", "--frontend", "polarise"], "frontend='polarise' is not valid"),
    (["train", "--frontend", "polarizing", "--rule", "pepita", "--backbone", "mlp"],
     "cannot train"),
    (["train", "--frontend", "polarizing", "--backbone", "polar-cnn", "--image-size", "16",
      "--epochs", "5"], "stage 3"),
    (["train", "--frontend", "polarizing", "--frontend-opt", "bogus=1"], "bogus"),
])
def test_front_end_option_errors(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_attack_option_errors(polar_runs):
    run = str(polar_runs[0].run_dir)
    for args, message in ((["--bpda", "straight"], "--bpda 'straight'"),
                          (["--eot", "0"], "--eot must be >= 1"),
                          (["--eot-reduce", "median"], "--eot-reduce")):
        result = runner.invoke(app, ["attack", "pgd", run, *args])
        assert result.exit_code != 0 and message in result.output, result.output
    result = runner.invoke(app, ["attack", "square", run, "--bpda", "identity"])
    assert result.exit_code != 0 and "gradient-free" in result.output


def test_adversarial_training_attacks_through_the_quantiser(polar_runs):
    from retrieval_bio.learners import build_attack
    from retrieval_bio.train import load_run

    _, model, splits = load_run(polar_runs[0].run_dir)
    x = torch.stack([splits.query[i][0] for i in range(8)])
    y = torch.stack([splits.query[i][1] for i in range(8)])
    adv = build_attack(model, "fgsm", eps=0.1)(x, y)
    assert (adv - x).abs().amax() == pytest.approx(0.1, abs=1e-6)  # not the clean images
