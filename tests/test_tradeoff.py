"""The trade-off experiment (seed 000 Fig. 2): grid expansion and validation, a failing cell
among finished ones, re-runs that skip finished cells, the summary statistics, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import PNG_SIGNATURE, RunCalls, torch_threads
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError, build_config
from retrieval_bio.runs import BEST, CHECKPOINT, METRICS, read_json
from retrieval_bio.tradeoff import AttackSpec, load_grid, run_tradeoff

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: 8-px digits, one epoch: about a second of training per cell on 2 CPU cores
BASE = {"stage": "train", "task": "classify", "backbone": "small-cnn", "dataset": "digits",
        "image_size": 8, "epochs": 1, "batch_size": 64, "device": "cpu"}
ATTACK = {"name": "pgd", "eps": 0.03, "steps": 3, "alpha": 0.01, "num_images": 50}
#: Adam at this rate blows the loss up a million-fold within the first 10 steps: the
#: trainer's divergence check stops the run, which only training can find out
DIVERGING_LR = 1000.0


def _grid_file(tmp: Path, name: str = "grid.yaml", **grid) -> Path:
    data = {"base": BASE, "rules": ["bp", "fa"], "lrs": [3e-3], "seeds": [0],
            "attack": ATTACK, "out": str(tmp / "out"), **grid}
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def _two_threads():
    with torch_threads(2):
        yield


# -- the grid -----------------------------------------------------------------------------


def test_grid_expands_into_rules_x_lrs_x_seeds(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(
        {**BASE, "lr_backbone": 5e-4, "weight_decay": 0.0}))
    path = _grid_file(tmp_path, base="configs/base.yaml", rules=["bp", "fa", "usf"],
                      lrs=[0.001, 0.01], seeds=[0, 1], lr_keys=["lr_head"],
                      rule_overrides={"fa": {"scale": "none"}}, attack=None)
    grid = load_grid(path)
    base = build_config("train", tmp_path / "configs" / "base.yaml")
    assert grid.base == base
    want = [(r, lr, s) for r in ("bp", "fa", "usf") for lr in (0.001, 0.01) for s in (0, 1)]
    assert [(c.rule, c.lr, c.seed) for c in grid.cells] == want
    for cell in grid.cells:
        cfg = cell.config
        assert cell.name == f"{cell.rule}-lr{cell.lr:g}-s{cell.seed}"
        assert cfg.out == str(tmp_path / "out" / cell.name) and cell.run_dir == Path(cfg.out)
        assert (cfg.rule, cfg.seed, cfg.lr_head) == (cell.rule, cell.seed, cell.lr)
        assert cfg.lr_backbone == 5e-4  # not in lr_keys: the base's value
        assert cfg.scale == ("none" if cell.rule == "fa" else "norm")
        expected = base.replace(rule=cell.rule, seed=cell.seed, lr_head=cell.lr, out=cfg.out,
                                scale=cfg.scale)
        assert cfg == expected
    # attack omitted: seed 000's protocol (PGD-40, ε 0.3, step 0.1, random start)
    assert grid.attack == AttackSpec("pgd", 0.3, 40, 0.1, True, None)

    # an inline base gets the stage's defaults like `retrieval-bio train --config` would;
    # learning rates may differ per rule (seed 000 picks each rule's own)
    path = _grid_file(tmp_path, "per-rule.yaml", base={"stage": "train", "backbone": "small-cnn"},
                      lrs={"bp": [0.1, 0.2], "fa": [0.3]})
    grid = load_grid(path)
    assert grid.base == build_config("train", backbone="small-cnn")
    assert [c.name for c in grid.cells] == ["bp-lr0.1-s0", "bp-lr0.2-s0", "fa-lr0.3-s0"]
    assert all(c.config.lr_backbone == c.config.lr_head == c.lr for c in grid.cells)


def test_the_example_grid_loads():
    grid = load_grid(CONFIGS / "tradeoff" / "digits-bp-fa.yaml")
    assert grid.rules == ["bp", "fa"] and len(grid.cells) == 6
    assert (grid.base.dataset, grid.base.backbone, grid.base.root) == ("digits", "small-cnn",
                                                                       None)


@pytest.mark.parametrize("change, named", [
    ({"rulez": ["bp"]}, ["'rulez'", "valid keys", "rules"]),
    ({"attack": {"nme": "pgd"}}, ["'nme'", "valid keys", "eps"]),
    ({"base": {**BASE, "backbon": "x"}}, ["base", "'backbon'"]),
    ({"rule_overrides": {"fa": {"lr": 1}}}, ["cell fa-lr0.003-s0", "'lr'"]),
    ({"rule_overrides": {"usf": {"scale": "none"}}}, ["'usf'", "rules"]),
    ({"rule_overrides": {"fa": {"lr_head": 1.0}}}, ["rule_overrides.fa", "lr_head"]),
    ({"rules": ["bp"]}, ["rules", "2 or more"]),
    ({"rules": ["bp", "hebbian"]}, ["cell hebbian-lr0.003-s0", "rule='hebbian'"]),
    ({"lrs": []}, ["lrs", "non-empty"]),
    ({"lrs": [0.01, 0]}, ["lrs[1]", "bp-lr0-s0", "positive"]),
    ({"lrs": {"bp": [0.1]}}, ["lrs", "bp, fa"]),
    ({"seeds": []}, ["seeds"]),
    ({"lr_keys": ["epochs"]}, ["lr_keys", "'epochs'"]),
    ({"attack": {**ATTACK, "eps": 2}}, ["eps must lie in [0, 1]"]),
    ({"attack": {"name": "hag"}}, ["attack.name", "'hag'"]),
    ({"attack": {"name": "fgsm", "alpha": 0.1}}, ["attack.alpha", "pgd only"]),
    ({"base": {**BASE, "task": "hash"}}, ["base", "task", "classify"]),
])
def test_bad_grid_keys_are_named(tmp_path, change, named):
    path = _grid_file(tmp_path, **change)
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    msg = str(info.value)
    assert str(path) in msg and all(n in msg for n in named), msg
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_every_cell_is_checked_before_anything_runs(tmp_path):
    path = _grid_file(tmp_path, rules=["bp", "fa", "hebbian"],
                      rule_overrides={"fa": {"adv_eps": 5.0}})
    msg = str(pytest.raises(ConfigError, load_grid, path).value)
    assert "cell fa-lr0.003-s0" in msg and "adv_eps" in msg
    assert "cell hebbian-lr0.003-s0" in msg and "bp-" not in msg


# -- running a grid -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """bp at a good and a diverging learning rate, fa at the good one; two seeds: 6 cells."""
    tmp = tmp_path_factory.mktemp("tradeoff")
    with torch_threads(2):
        grid = load_grid(_grid_file(tmp, lrs={"bp": [3e-3, DIVERGING_LR], "fa": [3e-3]},
                                    seeds=[0, 1]))
        seen: list[dict] = []
        result = run_tradeoff(grid, on_cell=seen.append)
    return grid, result, seen


def test_a_failing_cell_is_recorded_and_the_others_finish(ran):
    grid, result, seen = ran
    cells = {c["cell"]: c for c in result["cells"]}
    assert list(cells) == [c.name for c in grid.cells]
    failed = [c.name for c in grid.cells if c.lr == DIVERGING_LR]
    assert [e["cell"] for e in result["errors"]] == failed
    for name in failed:
        assert cells[name]["status"] == "failed"
        assert "DivergenceError" in cells[name]["error"] and "diverged" in cells[name]["error"]
        assert cells[name]["natural"] is None and cells[name]["adversarial"] is None
    for cell in grid.cells:
        if cell.name in failed:
            continue
        rec = cells[cell.name]
        assert rec["status"] == "computed", rec
        assert rec["natural"] == read_json(cell.run_dir / METRICS)["test_accuracy"]
        report = read_json(rec["report"])
        assert rec["adversarial"] == report["accuracy"]["exact"][report["eps"].index(0.03)]
        assert report["num_queries"] == 50 and report["steps"] == 3
        assert report["settings"]["attack_kwargs"] == {"alpha": 0.01, "random_start": True}
        assert 0 <= rec["adversarial"] <= 1 and rec["natural"] > 0.5
    # each cell was announced when it started and when it ended
    assert [s["status"] for s in seen] == [s for c in result["cells"]
                                           for s in ("running", c["status"])]
    assert not result["complete"]
    on_disk = json.loads((grid.out / "tradeoff.json").read_text())
    assert on_disk == {k: v for k, v in result.items() if k != "path"}
    assert (grid.out / "tradeoff.png").read_bytes().startswith(PNG_SIGNATURE)
    # the diverging lr has no point; the headline averages the lrs that have one
    assert [(p["rule"], p["lr"]) for p in result["summary"]] == [("bp", 3e-3), ("fa", 3e-3)]
    assert result["headline"]["bp"]["lrs"] == result["headline"]["fa"]["lrs"] == [3e-3]
    assert not result["headline"]["bp"]["complete"] and result["headline"]["fa"]["complete"]


def test_summary_is_the_mean_and_std_over_seeds(ran):
    grid, result, _ = ran
    for point in result["summary"]:
        cells = [c for c in result["cells"] if (c["rule"], c["lr"]) == (point["rule"],
                                                                        point["lr"])]
        nat = np.array([c["natural"] for c in cells])
        adv = np.array([c["adversarial"] for c in cells])
        assert point["seeds"] == [0, 1] and point["n"] == 2 and point["complete"]
        assert point["natural_mean"] == pytest.approx(np.mean(nat))
        assert point["natural_std"] == pytest.approx(np.std(nat))
        assert point["adversarial_mean"] == pytest.approx(np.mean(adv))
        assert point["adversarial_std"] == pytest.approx(np.std(adv))
    for rule, head in result["headline"].items():
        points = [p for p in result["summary"] if p["rule"] == rule]
        gaps = [p["natural_mean"] - p["adversarial_mean"] for p in points]
        assert head["mean_gap"] == pytest.approx(np.mean(gaps))


def test_a_rerun_skips_finished_cells_and_retries_failed_ones(ran, monkeypatch):
    grid, first, _ = ran
    finished = [c for c in grid.cells if c.lr != DIVERGING_LR]
    files = [c.run_dir / f for c in finished for f in (BEST, CHECKPOINT, METRICS)]
    files += [Path(r["report"]) for r in first["cells"] if r["status"] == "computed"]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    calls = RunCalls(monkeypatch)
    again = run_tradeoff(grid)
    assert calls.trained == [(c.name, False) for c in grid.cells if c.lr == DIVERGING_LR]
    assert calls.attacked == []
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    statuses = {c["cell"]: c["status"] for c in again["cells"]}
    assert all(statuses[c.name] == "reused" for c in finished)
    assert again["summary"] == first["summary"] and again["headline"] == first["headline"]
    keep = ("cell", "natural", "adversarial", "report")
    assert [{k: c.get(k) for k in keep} for c in again["cells"]] == \
        [{k: c.get(k) for k in keep} for c in first["cells"]]


def test_a_finished_folder_of_another_config_is_refused(ran, tmp_path):
    """The grid was edited (more epochs) but out is the same: the finished cells are not
    reused as if they were the new experiment's."""
    grid, _, _ = ran
    path = _grid_file(tmp_path, base={**BASE, "epochs": 2}, seeds=[0], out=str(grid.out))
    result = run_tradeoff(load_grid(path))
    for cell in result["cells"]:
        assert cell["status"] == "failed"
        assert "holds a run of another config (epochs: 1 there, 2 in the grid)" in cell["error"]


# -- the command line ---------------------------------------------------------------------


def test_cli_runs_a_grid_continues_after_ctrl_c_and_lists_cells(tmp_path, monkeypatch):
    runner = CliRunner()
    path = _grid_file(tmp_path)  # bp and fa, one lr, one seed
    out = tmp_path / "out"
    r = runner.invoke(app, ["tradeoff", str(path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "bp-lr0.003-s0" in r.output and "fa-lr0.003-s0" in r.output
    assert "0 of 2 cells finished" in r.output and not out.exists()

    # Ctrl-C in the middle of the second cell's training
    calls = RunCalls(monkeypatch, interrupt="fa-lr0.003-s0")
    r = runner.invoke(app, ["tradeoff", str(path), "--device", "cpu"])
    assert r.exit_code == 130, r.output
    assert "finished cells (1 of 2): bp-lr0.003-s0" in r.output
    assert "run the same command again" in r.output.lower()
    assert (out / "fa-lr0.003-s0" / CHECKPOINT).is_file()
    status = {c["cell"]: c["status"] for c in read_json(out / "tradeoff.json")["cells"]}
    assert status == {"bp-lr0.003-s0": "computed", "fa-lr0.003-s0": "interrupted"}
    r = runner.invoke(app, ["tradeoff", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "1 of 2 cells finished" in r.output
    assert "partial" in r.output and "finished" in r.output

    # the same command again: bp is skipped, fa resumes from its checkpoint
    calls = RunCalls(monkeypatch)
    r = runner.invoke(app, ["tradeoff", str(path), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert calls.trained == [("fa-lr0.003-s0", True)]
    assert calls.attacked == ["fa-lr0.003-s0"]
    result = read_json(out / "tradeoff.json")
    assert result["complete"] and not result["errors"]
    assert [c["status"] for c in result["cells"]] == ["reused", "computed"]
    assert "bp: mean over 1 lr(s) of natural − adversarial" in r.output
    assert (out / "tradeoff.png").read_bytes().startswith(PNG_SIGNATURE)
    r = runner.invoke(app, ["tradeoff", str(path), "--dry-run"])
    assert r.exit_code == 0 and "2 of 2 cells finished" in r.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["tradeoff", str(_grid_file(tmp_path, seedz=[0]))])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.startswith("error: ") and "'seedz'" in r.output
    r = runner.invoke(app, ["tradeoff", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["tradeoff", str(_grid_file(tmp_path)), "--device", "tpu"])
    assert r.exit_code == 2 and "device" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["tradeoff", str(_grid_file(
        tmp_path, base={**BASE, "dataset_options": {"countz": 3}}))])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "cell bp-lr0.003-s0: dataset_options: countz: not an option of dataset" in r.output
    assert not (tmp_path / "out").exists()
