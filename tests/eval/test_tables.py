"""The report of tiny real runs reproduces their files: every cell of clean.csv and
robust.csv is the number the run's own metrics.json / attack-*.json holds (read here from
the files, not from the report), seeds of one config give numpy's mean and std (ddof=1),
settings that differ are never averaged, and the errors are one clean line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from helpers import PNG_SIGNATURE, copy_run, torch_threads
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import RunConfig
from retrieval_bio.eval.tables import build_report, find_runs, summarize
from retrieval_bio.runs import RunFolderError
from retrieval_bio.train import train_run
from retrieval_bio.workflows import attack_run

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = [0.0, 0.1]
ATTACK = dict(max_queries=20, device="cpu", plot=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """bp and frsf classifiers (frsf twice: seeds 0 and 1, one config) attacked with FGSM at
    two ε, and an frsf hashing run attacked with HAG (2 steps)."""
    # one thread here too: a module fixture is set up before the function-scoped one_thread
    with torch_threads(1):
        return _make_runs(tmp_path_factory.mktemp("report-runs"), tiny_run)


def _make_runs(base: Path, tiny_run) -> dict[str, Path]:
    bp = copy_run(tiny_run("classify", "bp"), base / "bp")
    frsf = copy_run(tiny_run("classify", "frsf"), base / "frsf")
    cfg = RunConfig.load_run(frsf / "config.yaml")
    seed1 = base / "frsf-seed1"
    train_run(cfg.replace(seed=1, out=str(seed1)))
    hashing = copy_run(tiny_run("hash", "frsf"), base / "hash")
    for run in (bp, frsf, seed1):
        attack_run(run, "fgsm", EPS, **ATTACK)
    attack_run(hashing, "hag", EPS, steps=2, **ATTACK)
    return {"bp": bp, "frsf": frsf, "seed1": seed1, "hash": hashing}


def metric(run: Path, key: str) -> float:
    return json.loads((run / "metrics.json").read_text())[key]


def report_of(run: Path, attack: str) -> dict:
    (path,) = run.glob(f"attack-{attack}-*.json")
    return json.loads(path.read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def number(text: str) -> float:
    return float(text)  # the CSV holds repr(float): it reads back to the very number


def test_two_runs_reproduce_their_metrics_files(runs, tmp_path):
    out = tmp_path / "rep"
    result = build_report([runs["bp"], runs["frsf"], runs["hash"]], out)
    (classify, hashing) = read_csv(out / "clean.csv")
    assert classify["task"] == "classify" and classify["backbone"] == "small-cnn"
    assert classify["dataset"] == "digits" and classify["settings"] == ""
    assert number(classify["bp"]) == metric(runs["bp"], "test_accuracy")
    assert number(classify["frsf"]) == metric(runs["frsf"], "test_accuracy")
    assert classify["bp std"] == "" and classify["bp n"] == "1"  # one seed: the value alone
    assert number(hashing["frsf"]) == metric(runs["hash"], "map@k")
    assert hashing["bp"] == "" and hashing["metric"] == "mAP@all"  # tiny runs: k = 0

    rows = read_csv(out / "robust.csv")
    bp_rep, frsf_rep, hag = (report_of(runs["bp"], "fgsm"), report_of(runs["frsf"], "fgsm"),
                             report_of(runs["hash"], "hag"))
    expected = [("bp", "exact", bp_rep, "accuracy"), ("frsf", "exact", frsf_rep, "accuracy"),
                ("frsf", "model", frsf_rep, "accuracy"), ("frsf", "exact", hag, "map"),
                ("frsf", "model", hag, "map")]
    assert [(r["rule"], r["grad"]) for r in rows] == [(e[0], e[1]) for e in expected]
    for row, (_, grad, rep, key) in zip(rows, expected, strict=True):
        assert row["attack"] == rep["attack"] and row["norm"] == "linf"
        assert number(row["clean"]) == rep[f"clean_{key}"] and row["n_runs"] == "1"
        for i, e in enumerate(rep["eps"]):
            assert number(row[f"eps={e!r}"]) == rep[key][grad][i]
            assert row[f"eps={e!r} n"] == "1" and row[f"eps={e!r} std"] == ""
    assert rows[0]["same_computation"] == "model"  # BP: exact and model are one computation
    assert number(rows[3]["theory"]) == hag["theory_map"] and rows[0]["theory"] == ""
    assert rows[0]["falls_to_chance"] == "unknown"  # largest ε 0.1 < 1
    assert result["runs"][0]["reports"] == [bp_rep["path"]]

    md = (out / "robust.md").read_text()
    assert "| small-cnn | digits | bp | exact (= model) |" in md  # never an unlabelled merge
    assert "## FGSM (L∞): robust accuracy vs ε" in md and "## HAG (L∞): mAP@all vs ε" in md
    assert "| backbone | dataset | metric | bp | frsf |" in (out / "clean.md").read_text()
    for name in ("robust-fgsm-small-cnn-digits.png", "robust-hag-small-cnn-digits.png"):
        png = out / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE and mpimg.imread(png).ndim == 3
    stored = json.loads((out / "report.json").read_text())
    assert stored["files"] == ["clean.md", "clean.csv", "robust.md", "robust.csv",
                               "robust-fgsm-small-cnn-digits.png",
                               "robust-hag-small-cnn-digits.png", "report.json"]
    assert [r["run"] for r in stored["runs"]] == [str(runs[k]) for k in ("bp", "frsf", "hash")]


def test_seeds_give_mean_and_sample_std(runs, tmp_path):
    out = tmp_path / "seeds"
    build_report([runs["frsf"], runs["seed1"]], out, plot=False)
    accs = [metric(runs[k], "test_accuracy") for k in ("frsf", "seed1")]
    (row,) = read_csv(out / "clean.csv")
    assert number(row["frsf"]) == np.mean(accs)
    assert number(row["frsf std"]) == np.std(accs, ddof=1) and row["frsf n"] == "2"
    reps = [report_of(runs[k], "fgsm") for k in ("frsf", "seed1")]
    for r in read_csv(out / "robust.csv"):
        vals = [rep["accuracy"][r["grad"]][1] for rep in reps]
        assert number(r["eps=0.1"]) == np.mean(vals)
        assert number(r["eps=0.1 std"]) == np.std(vals, ddof=1) and r["eps=0.1 n"] == "2"
    assert "(n=2)" in (out / "clean.md").read_text()
    assert not list(out.glob("*.png"))
    assert summarize([0.5]) == {"mean": 0.5, "std": None, "n": 1, "values": [0.5]}


def _edit_config(run: Path, **changes) -> None:
    text = (run / "config.yaml").read_text()
    for key, value in changes.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line
                 for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    (run / "config.yaml").write_text(text)


def test_other_settings_are_split_or_noted_never_averaged(runs, tmp_path):
    # a copy of the frsf run with another lr_head: same cell, other settings
    other = Path(shutil.copytree(runs["frsf"], tmp_path / "runs" / "frsf-lr"))
    _edit_config(other, lr_head=0.01)
    out = tmp_path / "split"
    result = build_report([runs["frsf"], other, runs["seed1"]], out, plot=False)
    assert result["split_keys"] == {"classify": ["lr_head"]}
    rows = read_csv(out / "clean.csv")
    assert [(r["settings"], r["frsf n"]) for r in rows] == [("lr_head=0.003", "2"),
                                                            ("lr_head=0.01", "1")]
    # bp with another epochs count: not a split (one bp run), but a note under the table
    bp = Path(shutil.copytree(runs["bp"], tmp_path / "runs" / "bp-ep"))
    _edit_config(bp, epochs=2)
    result = build_report([bp, runs["frsf"]], tmp_path / "noted", plot=False)
    assert result["notes"] == ["classify · small-cnn · digits: the rules also differ in "
                               "epochs (bp: 2; frsf: 1)"]
    assert "the rules also differ in epochs" in (tmp_path / "noted" / "clean.md").read_text()


def test_masking_note_and_a_sweep_root_with_an_unfinished_run(runs, tmp_path):
    root = tmp_path / "sweep"
    run = copy_run(runs["bp"], root / "a" / "bp")
    unfinished = root / "b" / "unfinished"
    unfinished.mkdir(parents=True)
    shutil.copy(runs["bp"] / "config.yaml", unfinished / "config.yaml")
    rep = attack_run(run, "fgsm", EPS, **ATTACK)
    rep = json.loads(Path(rep["path"]).read_text())
    rep["masking"]["falls_to_chance"] = False  # as a masked model's report says
    Path(rep["path"]).write_text(json.dumps(rep))
    assert find_runs([root]) == [run, unfinished]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"skipped: {unfinished}: no metrics.json" in result.output
    assert f"written: {out / 'robust.md'}" in result.output
    md = (out / "robust.md").read_text()
    assert "does not fall to chance" in md and rep["path"] in md
    assert "| no |" in md
    assert f"{unfinished}: no metrics.json" in (out / "clean.md").read_text()
    skipped = json.loads((out / "report.json").read_text())["skipped"]
    assert [s["run"] for s in skipped] == [str(unfinished)]


def test_errors_are_one_clean_line(runs, tmp_path):
    def invoke(*args):
        r = CliRunner().invoke(app, ["report", *map(str, args)])
        return r.exit_code, r.output

    code, out = invoke(runs["bp"], runs["frsf"])
    assert code == 2 and "add --out DIR" in out
    (tmp_path / "empty").mkdir()
    code, out = invoke(tmp_path / "empty", "--out", tmp_path / "o")
    assert code == 2 and "holds no run folder" in out
    with pytest.raises(RunFolderError, match="at least one run"):
        build_report([], tmp_path / "o")
    damaged = copy_run(runs["bp"], tmp_path / "damaged")
    (damaged / "metrics.json").write_text('{"test_accuracy": 0.9')
    code, out = invoke(damaged, runs["frsf"], "--out", tmp_path / "o")
    assert code == 2 and f"{damaged / 'metrics.json'} is not valid JSON" in out
    assert len(out.strip().splitlines()) == 1
    # an attack report without its values is left out with a warning, not a crash
    bad = copy_run(runs["bp"], tmp_path / "bad-report")
    (bad / "attack-fgsm-0000.json").write_text('{"attack": "fgsm", "metric": "accuracy"}')
    result = build_report([bad], tmp_path / "o2", plot=False)
    assert result["robust"] == [] and len(result["warnings"]) == 1
    assert "attack-fgsm-0000.json skipped: it lacks the eps" in result["warnings"][0]
    # one run, shown in the terminal as before
    code, out = invoke(runs["bp"])
    assert code == 0 and "test_accuracy" in out and "attack-fgsm-" in out
