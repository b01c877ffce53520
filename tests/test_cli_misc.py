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


def test_the_command_list_shows_each_summary_as_one_paragraph():
    """Typer's rich help would keep a docstring's line breaks in the list of commands and
    wrap each line again (a staircase of short lines)."""
    import re

    from retrieval_bio.cli import data_app

    for group in (app, data_app):
        for info in group.registered_commands:
            assert info.short_help and "\n" not in info.short_help, info.name
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"}).output
    pretrain = re.search(r"pretrain\s+(BP[^\n]*)", out)
    assert pretrain is not None, out
    # the first panel line is filled before the text goes on to the next
    assert len(pretrain.group(1).rstrip(" │")) > 60, out
