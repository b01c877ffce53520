"""Robustness sweeps over real (tiny) trained runs: ε = 0 reproduces the clean metrics,
clean/theory mAP match a brute-force oracle over the run's own codes.npz, budgets hold, the
JSON and PNG are what the docs say, BP computes one gradient source, runs are deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import PNG_SIGNATURE

from retrieval_bio.eval.robustness import (
    default_eps,
    report_rows,
    subsample,
)
from retrieval_bio.workflows import attack_run

HASH_KEYS = {"attack", "task", "metric", "grad", "eps", "map", "clean_map", "theory_map", "k",
             "linf", "l2", "grad_calls", "steps", "preset", "rule", "seed", "num_queries",
             "notes"}
CLASSIFY_KEYS = {"attack", "task", "metric", "grad", "eps", "accuracy", "clean_accuracy",
                 "linf", "l2", "grad_calls", "steps", "rule", "seed", "num_queries", "notes"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hash_frsf(tiny_run):
    return tiny_run("hash", "frsf")


@pytest.fixture(scope="module")
def classify_bp(tiny_run):
    return tiny_run("classify", "bp")


@pytest.fixture(scope="module")
def hag_report(hash_frsf):
    return attack_run(hash_frsf, "hag", [0.0, 0.02, 0.5], device="cpu")


def brute_map(q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray) -> float:
    """mAP over the whole database, stable (index) ties: a loop written independently."""
    aps = []
    for i in range(len(q)):
        dist = (q.shape[1] - db.astype(np.int64) @ q[i].astype(np.int64)) // 2
        order = np.argsort(dist, kind="stable")
        rel = ((dl[order] * ql[i]).sum(1) > 0).astype(float)
        if rel.sum() == 0:
            aps.append(0.0)
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, len(rel) + 1) * rel).sum() / rel.sum()))
    return float(np.mean(aps))


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_hash_eps0_equals_clean_and_clean_matches_the_runs_codes(hash_frsf, hag_report):
    rep = hag_report
    for g in ("exact", "model"):
        assert rep["map"][g][0] == rep["clean_map"]
        assert rep["linf"][g][0] == 0.0 and rep["l2"][g][0] == 0.0
    # Oracle: the codes the training pipeline wrote (independent encoding path) scored by a
    # brute-force mAP; the run has k = 0 (digits: whole database).
    with np.load(hash_frsf / "codes.npz") as z:
        q, db, ql, dl = z["query_codes"], z["db_codes"], z["query_labels"], z["db_labels"]
    assert rep["k"] == 0 and rep["num_queries"] == len(q)
    assert rep["clean_map"] == pytest.approx(brute_map(q, db, ql, dl), abs=1e-12)
    assert rep["theory_map"] == pytest.approx(brute_map(-q, db, ql, dl), abs=1e-12)
    assert rep["theory_map"] < 0.3 < rep["clean_map"]


def test_hash_report_schema_budget_and_effect(hash_frsf, hag_report):
    rep = hag_report
    assert HASH_KEYS <= set(rep)
    assert rep["attack"] == "hag" and rep["metric"] == "map" and rep["rule"] == "frsf"
    assert rep["grad"] == ["exact", "model"] and rep["eps"] == [0.0, 0.02, 0.5]
    assert rep["steps"] == 5 and rep["preset"] == "paper"
    for key in ("map", "linf", "l2", "grad_calls"):
        assert set(rep[key]) == {"exact", "model"}
        assert all(len(v) == len(rep["eps"]) for v in rep[key].values())
    for g in ("exact", "model"):
        for e, linf in zip(rep["eps"], rep["linf"][g], strict=True):
            assert linf <= e + 1e-6  # float32 (x + ε) − x may exceed ε by an ulp
        assert rep["grad_calls"][g] == [5 * 2] * 3  # 200 queries = 2 batches of <= 128, 5 steps
    # frSF: the exact and the model gradient are different attacks ...
    assert rep["l2"]["exact"][-1] != rep["l2"]["model"][-1]
    # ... and the exact (white-box) one hurts retrieval substantially at ε = 0.5.
    assert rep["map"]["exact"][-1] < rep["clean_map"] - 0.1
    # The JSON on disk is the returned report; the PNG is a real image.
    json_path = Path(rep["path"])
    png_path = json_path.with_suffix(".png")
    assert json_path.parent == hash_frsf and json_path.name.startswith("attack-hag-")
    assert json.loads(json_path.read_text()) == rep
    assert_png(png_path)
    header, rows = report_rows(rep)
    assert header[:3] == ["ε (L∞)", "map (exact)", "map (model)"]
    assert [r[0] for r in rows] == ["clean", "0", "0.02", "0.5", "theory (−h)"]


def test_sdha_subsample_and_determinism(hash_frsf):
    kw = dict(max_queries=30, device="cpu", seed=3, grads=("exact",), plot=False)
    a = attack_run(hash_frsf, "sdha", [0.0, 0.1], **kw)
    b = attack_run(hash_frsf, "sdha", [0.0, 0.1], overwrite=True, **kw)  # recomputed
    for r in (a, b):
        r.pop("time_s")
    assert a == b
    assert a["num_queries"] == 30 and a["grad"] == ["exact"]
    assert a["map"]["exact"][0] == a["clean_map"]
    assert a["linf"]["exact"][1] <= 0.1 + 1e-6


def test_classify_eps0_equals_clean_and_bp_attacks_once(classify_bp):
    rep = attack_run(classify_bp, "fgsm", [0.0, 0.3], device="cpu")
    assert CLASSIFY_KEYS <= set(rep)
    metrics = json.loads((classify_bp / "metrics.json").read_text())
    assert rep["clean_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)
    assert rep["accuracy"]["exact"][0] == rep["clean_accuracy"]
    # BP: one computation, one column; the other source is named, with a note.
    assert rep["grad"] == ["exact"] and set(rep["accuracy"]) == {"exact"}
    assert rep["same_computation"] == {"model": "exact"}
    assert any("same computation" in n for n in rep["notes"])
    assert rep["accuracy"]["exact"][1] < rep["clean_accuracy"]
    assert rep["linf"]["exact"][1] <= 0.3 + 1e-6
    assert rep["grad_calls"]["exact"] == [2, 2]  # FGSM: one gradient per batch (2 batches)
    assert_png(Path(rep["path"]).with_suffix(".png"))


def test_square_is_gradient_free(classify_bp):
    rep = attack_run(classify_bp, "square", [0.0, 0.3], steps=30, max_queries=40,
                     device="cpu", plot=False)
    assert rep["grad"] == ["none"] and rep["steps"] == 30
    assert rep["grad_calls"] == {"none": [0, 0]}
    assert rep["accuracy"]["none"][0] == rep["clean_accuracy"]
    assert rep["linf"]["none"][1] <= 0.3 + 1e-6


def test_wrong_task_and_bad_arguments(hash_frsf, classify_bp):
    with pytest.raises(ValueError, match="hash run"):
        attack_run(hash_frsf, "fgsm", [0.1], device="cpu")
    with pytest.raises(ValueError, match="preset"):  # pgd's presets are paper | pepita
        attack_run(classify_bp, "pgd", [0.1], preset="reference", device="cpu")
    with pytest.raises(ValueError, match="preset"):
        attack_run(classify_bp, "fgsm", [0.1], preset="paper", device="cpu")
    with pytest.raises(ValueError, match="grad must be one of"):  # BP: checked, not copied
        attack_run(classify_bp, "fgsm", [0.1], grads=("exact", "backprop"), device="cpu")
    with pytest.raises(ValueError, match="unknown attack"):
        attack_run(classify_bp, "cw", [0.1], device="cpu")


def test_defaults_and_subsample():
    assert default_eps("hag") == [0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
    assert default_eps("sdha", "reference") == [8 / 255]
    assert default_eps("pgd")[0] == 0.0 and len(default_eps("fgsm")) == 7
    data = list(range(50))
    sub = subsample(data, 10, seed=1)
    assert len(sub) == 10 and len(set(sub)) == 10
    assert list(sub) == sorted(sub)
    assert list(subsample(data, 10, seed=1)) == list(sub)
    assert list(subsample(data, 10, seed=2)) != list(sub)
    assert subsample(data, None, 0) is data and subsample(data, 99, 0) is data


def test_line_plot_handles_eps_zero_and_checks_lengths(tmp_path):
    from retrieval_bio.eval.plots import line_plot

    path = line_plot(tmp_path / "sub" / "p.png", {"a": ([0, 0.01, 0.1], [1.0, 0.5, 0.1])},
                     "ε", "y", "t", logx=True, hlines={"clean": (1.0, {})}, note="n")
    assert_png(path)
    with pytest.raises(ValueError, match="2 y values"):
        line_plot(tmp_path / "q.png", {"a": ([0, 1, 2], [1, 2])}, "x", "y", "t")
    assert not (tmp_path / "q.png").exists()
