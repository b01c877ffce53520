"""compare_runs gathers the attack reports of several real (tiny) runs per attack: every
value in compare.json and in the table is the one in the run's own attack-*.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import PNG_SIGNATURE, copy_run

from retrieval_bio.eval.compare import compare_rows, compare_runs, load_reports, run_labels
from retrieval_bio.runs import RunFolderError
from retrieval_bio.workflows import attack_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, tiny_run):
    """BP and frSF hash runs attacked with HAG, and a BP classifier attacked with FGSM."""
    base = tmp_path_factory.mktemp("compare-runs")
    bp = copy_run(tiny_run("hash", "bp"), base / "bp")
    frsf = copy_run(tiny_run("hash", "frsf"), base / "frsf")
    cls = copy_run(tiny_run("classify", "bp"), base / "cls")
    kw = dict(max_queries=30, device="cpu", plot=False)
    reports = {"bp": attack_run(bp, "hag", [0.0, 0.05, 0.3], **kw),
               "frsf": attack_run(frsf, "hag", [0.05, 0.3, 0.5], **kw),  # another ε grid
               "cls": attack_run(cls, "fgsm", [0.0, 0.1], **kw)}
    return bp, frsf, cls, {k: Path(r["path"]) for k, r in reports.items()}


def test_compare_two_hash_runs(attacked, tmp_path):
    bp, frsf, _, files = attacked
    out = tmp_path / "cmp"
    result = compare_runs([bp, frsf], out)
    written = json.loads((out / "compare.json").read_text())
    assert written == result
    assert [r["label"] for r in result["runs"]] == ["bp", "frsf"]
    entry = result["attacks"]["hag"]
    assert set(result["attacks"]) == {"hag"}
    assert entry["metric"] == "map" and entry["eps"] == [0.0, 0.05, 0.3, 0.5]
    # Every number is the run's own report (the oracle: the JSON attack_run wrote).
    for label in ("bp", "frsf"):
        rep = json.loads(files[label].read_text())
        got = entry["runs"][label]
        assert got["report"] == str(files[label])  # it says which report it used
        assert got["values"] == rep["map"] and got["eps"] == rep["eps"]
        assert got["clean"] == rep["clean_map"] and got["theory"] == rep["theory_map"]
    header, rows = compare_rows(entry)
    assert header == ["ε", "bp exact", "frsf exact", "frsf model"]
    by_eps = {r[0]: r[1:] for r in rows}
    assert list(by_eps) == ["clean", "0", "0.05", "0.3", "0.5", "theory"]
    frsf_rep = json.loads(files["frsf"].read_text())
    bp_rep = json.loads(files["bp"].read_text())
    assert "model" not in bp_rep["map"] and bp_rep["same_computation"] == {"model": "exact"}
    assert by_eps["0.3"] == [bp_rep["map"]["exact"][2], frsf_rep["map"]["exact"][1],
                             frsf_rep["map"]["model"][1]]
    assert by_eps["0"][1:] == [None, None]  # frSF was not attacked at ε = 0
    assert by_eps["0.5"][:1] == [None]
    png = out / result["plots"]["hag"]
    assert png.name == "compare-hag.png" and png.read_bytes()[:8] == PNG_SIGNATURE


def test_compare_mixes_classification_runs(attacked, tmp_path):
    bp, _, cls, files = attacked
    result = compare_runs([bp, cls], tmp_path / "mixed")
    assert set(result["attacks"]) == {"hag", "fgsm"}
    fgsm = result["attacks"]["fgsm"]
    rep = json.loads(files["cls"].read_text())
    assert fgsm["metric"] == "accuracy"
    assert [r["label"] for r in result["runs"]] == ["bp:bp", "bp:cls"]  # same rule twice
    assert fgsm["runs"]["bp:cls"]["values"] == rep["accuracy"]
    assert fgsm["runs"]["bp:cls"]["clean"] == rep["clean_accuracy"]
    _, rows = compare_rows(fgsm)
    assert rows[0][0] == "clean" and rows[-1][0] != "theory"  # no theory bound for classifiers
    assert (tmp_path / "mixed" / "compare-fgsm.png").is_file()


def test_errors_and_labels(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "attack-bad.json").write_text("{not json")
    problems: list[str] = []
    assert load_reports(empty, problems) == []
    assert len(problems) == 1 and "attack-bad.json" in problems[0]
    with pytest.raises(RunFolderError, match="no attack"):
        compare_runs([empty], tmp_path / "out")
    with pytest.raises(RunFolderError, match="not a run folder"):
        compare_runs([tmp_path / "missing"], tmp_path / "out")
    assert run_labels(["a/x", "b/y", "c/z"], ["bp", "bp", "frsf"]) == ["bp:x", "bp:y", "frsf"]
    assert run_labels(["a/x", "b/x"], ["bp", "bp"]) == ["bp:x#0", "bp:x#1"]
