"""Resuming a run: wherever its folder has moved, with the stored config, flags that
contradict it refused (both values named) and safe ones applied and recorded; --init takes
the backbone and image size from the pretrain run; numbers that are not finite are refused."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import CtrlCAt
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError, RunConfig, build_config, resume_config
from retrieval_bio.runs import load_checkpoint, read_json
from retrieval_bio.train import train_run

runner = CliRunner()
BASE = dict(stage="pretrain", task="classify", backbone="small-cnn", dataset="digits",
            image_size=8, batch_size=64, epochs=2, lr_backbone=3e-3, lr_head=3e-3,
            device="cpu")


def test_moved_folder_resumes_in_place_and_matches_an_uninterrupted_run(tmp_path, one_thread):
    whole = train_run(RunConfig.from_dict({**BASE, "out": str(tmp_path / "whole")}))
    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):
        train_run(RunConfig.from_dict({**BASE, "out": str(first)}), step_hooks=[CtrlCAt(20)])
    moved = tmp_path / "elsewhere" / "moved [copy]"
    moved.parent.mkdir()
    shutil.move(first, moved)
    r = runner.invoke(app, ["pretrain", "--resume", "--out", str(moved)])
    assert r.exit_code == 0, r.output
    assert not first.exists()  # nothing was written into the folder recorded in the config
    assert RunConfig.load(moved / "config.yaml").out == str(moved)
    assert "test_accuracy" in read_json(moved / "metrics.json")
    a = load_checkpoint(moved / "best.pt")["model"]
    b = load_checkpoint(whole.run_dir / "best.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_contradicting_flags_are_refused_and_safe_ones_applied(tmp_path, one_thread):
    run = tmp_path / "run"
    train_run(RunConfig.from_dict({**BASE, "epochs": 1, "out": str(run)}))
    r = runner.invoke(app, ["pretrain", "--resume", "--out", str(run), "--lr-head", "0.5"])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "--lr-head 0.5" in text and "lr_head: 0.003" in text and "Traceback" not in text
    r = runner.invoke(app, ["finetune", "--resume", "--out", str(run)])
    assert r.exit_code == 2 and "holds a pretrain run" in r.output
    # an equal value is no contradiction; --epochs may grow on resume and is recorded
    r = runner.invoke(app, ["pretrain", "--resume", "--out", str(run), "--epochs", "2",
                            "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    assert RunConfig.load(run / "config.yaml").epochs == 2
    assert [h["epoch"] for h in read_json(run / "metrics.json")["history"]] == [1, 2]


def test_resume_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no run to continue"):
        resume_config(tmp_path, "pretrain")
    r = runner.invoke(app, ["pretrain", "--resume"])
    assert r.exit_code == 2 and "--resume needs --out" in r.output


def test_init_run_gives_backbone_and_image_size(tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    RunConfig.from_dict({**BASE, "backbone": "alexnet", "image_size": 40}).save(
        pre / "config.yaml")
    cfg = build_config("finetune", init=str(pre))
    assert (cfg.backbone, cfg.image_size) == ("alexnet", 40)
    cfg = build_config("finetune", init=str(pre), image_size=64)  # a flag wins
    assert (cfg.backbone, cfg.image_size) == ("alexnet", 64)
    yml = tmp_path / "c.yaml"
    yml.write_text("backbone: vgg16\n")  # so does the config file
    cfg = build_config("finetune", yml, init=str(pre))
    assert (cfg.backbone, cfg.image_size) == ("vgg16", 40)
    weights_file = tmp_path / "w.pt"
    weights_file.write_bytes(b"")
    assert build_config("finetune", init=str(weights_file)).backbone == RunConfig().backbone


@pytest.mark.parametrize(("key", "value"), [
    ("lr_head", float("inf")), ("lr_backbone", float("nan")), ("weight_decay", "1e400"),
    ("betas", [0.9, float("nan")]), ("divergence_factor", float("inf")),
])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        RunConfig.from_dict({key: value})


def test_devices_and_index_kinds():
    assert RunConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="cuda:N"):
        RunConfig(device="gpu")
    assert RunConfig(index="multihash").index == "multihash"
    with pytest.raises(ConfigError, match="index='lsh'"):
        RunConfig(index="lsh")


def test_a_config_file_of_another_stage_is_refused(tmp_path):
    fine = tmp_path / "fine.yaml"
    RunConfig.from_dict({**BASE, "stage": "finetune", "rule": "frsf"}).save(fine)
    with pytest.raises(ConfigError, match="is a finetune config"):
        build_config("pretrain", fine)
    pre = tmp_path / "pre.yaml"
    RunConfig.from_dict(BASE).save(pre)
    with pytest.raises(ConfigError, match="is a pretrain config"):
        build_config("finetune", pre)
    partial = tmp_path / "partial.yaml"  # a hand-written file without a stage is fine
    partial.write_text("rule: frsf\nepochs: 3\n")
    assert build_config("finetune", partial).stage == "finetune"
    with pytest.raises(ConfigError, match="pre-training is backpropagation"):
        build_config("pretrain", partial)


def test_a_truncated_run_config_is_refused_not_filled_with_defaults(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run("hash", "frsf"), run)
    text = (run / "config.yaml").read_text()
    for damaged in ("", text[:60]):
        (run / "config.yaml").write_text(damaged)
        r = runner.invoke(app, ["report", str(run)])
        assert r.exit_code == 2 and "truncated" in r.output, r.output
        r = runner.invoke(app, ["attack", "hag", str(run), "--eps", "0.1"])
        assert r.exit_code == 2 and "truncated" in r.output, r.output


def test_resume_needs_neither_the_init_folder_nor_fewer_epochs(tmp_path, one_thread):
    pre = tmp_path / "pre"
    train_run(RunConfig.from_dict({**BASE, "epochs": 1, "out": str(pre)}))
    fine = tmp_path / "fine"
    with pytest.raises(KeyboardInterrupt):
        train_run(RunConfig.from_dict({**BASE, "stage": "finetune", "rule": "frsf",
                                       "epochs": 3, "init": str(pre), "out": str(fine)}),
                  step_hooks=[CtrlCAt(35)])  # in epoch 3, two done
    shutil.move(pre, tmp_path / "pre-moved")  # the pretrain run is gone from its old place
    r = runner.invoke(app, ["finetune", "--resume", "--out", str(fine), "--epochs", "1"])
    assert r.exit_code == 2 and "fewer than the 2 epochs" in r.output
    r = runner.invoke(app, ["finetune", "--resume", "--out", str(fine)])
    assert r.exit_code == 0, r.output
    assert len(read_json(fine / "metrics.json")["history"]) == 3


def test_more_epochs_refused_when_the_schedule_spans_the_epochs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(stage="train", schedule="cosine", epochs=3, out=str(run)).save(
        run / "config.yaml")
    with pytest.raises(ConfigError, match="cosine schedule spans its epochs"):
        resume_config(run, "train", epochs=5)
    RunConfig(stage="train", schedule="cosine", epochs=3, t_max=3, out=str(run)).save(
        run / "config.yaml")
    assert resume_config(run, "train", epochs=5).epochs == 5  # t_max fixed: rates unchanged
