"""CLI: listing the registries, and dataset options given as flags."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent / "datasets"))
from fixtures import write_list_dataset  # noqa: E402

from retrieval_bio import rules  # noqa: E402
from retrieval_bio.cli import app  # noqa: E402
from retrieval_bio.config import RunConfig  # noqa: E402
from retrieval_bio.runs import read_json  # noqa: E402

runner = CliRunner()


def test_list_shows_every_registered_name():
    r = runner.invoke(app, ["list", "rules"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in rules.RULES:
        assert f" {name} " in r.output
    r = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert all(w in r.output for w in ("vgg16", "timm:<name>", "nuswide21", "sdha", "hyp2"))
    r = runner.invoke(app, ["list", "optimisers"])
    assert r.exit_code == 2 and "optimisers" in r.output


def test_data_opt_flags_reach_the_loader_and_the_config(tmp_path, one_thread):
    write_list_dataset(tmp_path / "data", n_classes=4, n_train=12, n_test=4, n_database=8,
                       size=8)
    out = tmp_path / "run"
    r = runner.invoke(app, [
        "pretrain", "--backbone", "small-cnn", "--dataset", "list", "--root",
        str(tmp_path / "data"), "--image-size", "8", "--epochs", "1", "--batch-size", "4",
        "--data-opt", "counts={validation: 3}", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = RunConfig.load(out / "config.yaml")
    assert cfg.dataset_options == {"counts": {"validation": 3}}
    assert "test_accuracy" in read_json(out / "metrics.json")
    r = runner.invoke(app, ["pretrain", "--data-opt", "novalue", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
