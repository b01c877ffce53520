"""CLI smoke tests of 'retrieval-bio attack' and 'retrieval-bio compare' on tiny real runs:
exit codes, the table's rows, the files written, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval_bio.cli import app

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    base = tmp_path_factory.mktemp("cli-runs")
    ignore = shutil.ignore_patterns("attack-*")
    out = {}
    for task, rule in (("hash", "frsf"), ("hash", "bp"), ("classify", "bp")):
        out[f"{task}-{rule}"] = Path(shutil.copytree(tiny_run(task, rule),
                                                     base / f"{task}-{rule}", ignore=ignore))
    return out


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def test_attack_hag_prints_table_and_writes_files(runs):
    run = runs["hash-frsf"]
    result, out = invoke("attack", "hag", run, "--eps", "0,0.1", "--steps", "3",
                         "--num-images", "20", "--device", "cpu", "--seed", "1")
    assert result.exit_code == 0, out
    for text in ("map (exact)", "map (model)", "clean", "theory", "0.1", "report:"):
        assert text in out
    (path,) = run.glob("attack-hag-*.json")
    assert f"report: {path}" in out
    rep = json.loads(path.read_text())
    assert rep["eps"] == [0.0, 0.1] and rep["steps"] == 3 and rep["seed"] == 1
    assert rep["num_queries"] == 20 and rep["grad"] == ["exact", "model"]
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_attack_classifier_default_eps_and_single_grad(runs):
    run = runs["classify-bp"]
    result, out = invoke("attack", "fgsm", run, "--grad", "model", "--num-images", "20",
                         "--device", "cpu")
    assert result.exit_code == 0, out
    (path,) = run.glob("attack-fgsm-*.json")
    rep = json.loads(path.read_text())
    assert rep["eps"] == [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5]  # SPEC §8's list
    assert rep["grad"] == ["model"] and "accuracy (model)" in out


def test_attack_auto_l2_writes_a_report(runs):
    run = runs["classify-bp"]
    result, out = invoke("attack", "auto", run, "--eps", "0,0.5,2", "--norm", "l2",
                         "--steps", "3", "--queries-per-image", "10", "--num-images", "20",
                         "--grad", "exact,model", "--device", "cpu")
    assert result.exit_code == 0, out
    flat = " ".join(out.split())  # the table's title may wrap
    for text in ("auto (L2) on bp", "ε (L2)", "APGD-CE + APGD-T 3 step(s), Square 10",
                 "accuracy (exact)", "report:"):
        assert text in flat
    (path,) = run.glob("attack-auto-*.json")
    rep = json.loads(path.read_text())
    assert rep["norm"] == "l2" and rep["eps"] == [0.0, 0.5, 2.0] and rep["steps"] == 3
    assert rep["settings"]["norm"] == "l2" and rep["settings"]["attack_kwargs"] == {
        "n_queries": 10}
    assert max(rep["l2"]["exact"]) <= 2.0 + 1e-5  # L2 sizes within the budget, above 1
    assert all(sum(c.values()) == 20 for c in rep["breakdown"]["exact"])
    assert rep["grad"] == ["exact"]  # BP: exact and model are one computation
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "message"), [
    (("attack", "pgd", "{cls}", "--eps", "0.1,2", "--norm", "linf"),
     "--eps must lie in [0, 1] for --norm linf (L∞ budget in pixel units, images in [0, 1]), "
     "got 2 (an L∞ ball of 1 already holds every image; for L2 budgets pass --norm l2)"),
    (("attack", "hag", "{hash}", "--eps", "0.1", "--norm", "l2"),
     "--norm l2: hag is defined for an L∞ budget only"),
    (("attack", "pgd", "{cls}", "--eps", "0.1", "--norm", "l1"), "--norm must be one of"),
    (("attack", "pgd", "{cls}", "--queries-per-image", "5"), "Square's budget (square, auto)"),
])
def test_attack_norm_errors_are_one_line(runs, args, message):
    args = [a.format(hash=runs["hash-frsf"], cls=runs["classify-bp"]) for a in args]
    result, out = invoke(*args)
    assert result.exit_code == 2
    assert message in " ".join(out.split())
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize(("args", "message"), [
    (("attack", "fgsm", "{hash}", "--device", "cpu"), "hash run"),
    (("attack", "hag", "{hash}", "--eps", "0.1,abc"), "comma-separated"),
    (("attack", "hag", "{hash}", "--grad", "backprop", "--eps", "0.1",
      "--num-images", "4", "--device", "cpu"), "grad must be one of"),
    (("attack", "hag", "{missing}", "--device", "cpu"), "not a run folder"),
])
def test_attack_errors(runs, tmp_path, args, message):
    args = [a.format(hash=runs["hash-frsf"], missing=tmp_path / "nope") for a in args]
    result, out = invoke(*args)
    assert result.exit_code == 2
    assert message in " ".join(out.split())


def test_compare_two_runs(runs, tmp_path):
    for name in ("hash-frsf", "hash-bp"):
        result, out = invoke("attack", "sdha", runs[name], "--eps", "0.05", "--steps", "2",
                             "--num-images", "10", "--device", "cpu")
        assert result.exit_code == 0, out
    out_dir = tmp_path / "cmp"
    result, out = invoke("compare", runs["hash-frsf"], runs["hash-bp"], "--out", out_dir)
    assert result.exit_code == 0, out
    assert "bp model" not in out  # BP has one computation: one column
    for text in ("sdha: map", "frsf exact", "frsf model", "bp exact"):
        assert text in out
    cmp = json.loads((out_dir / "compare.json").read_text())
    assert set(cmp["attacks"]["sdha"]["runs"]) == {"frsf", "bp"}
    assert (out_dir / "compare-sdha.png").is_file()
    result, out = invoke("compare", tmp_path)  # no reports there
    assert result.exit_code == 2 and "no attack" in out
