"""`retrieval-bio diagnose` with the representation section: several runs compared with --out,
clean errors for bad options, hash runs without critical perturbations."""

from __future__ import annotations

import json

import pytest
from helpers import PNG_SIGNATURE, copy_run
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.diagnose import diagnose_run, run_labels

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
# small and quick: representation only, few images, a short grid
FAST = ["--device", "cpu", "--no-layerwise", "--spectrum-images", "60", "--probe-images", "8",
        "--grid-size", "4", "--steps", "2"]


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("diagnose")
    src = tiny_run("classify", "bp")
    # the same folder name twice: the labels must tell them apart
    return copy_run(src, base / "a" / "run"), copy_run(src, base / "b" / "run"), base


def test_two_runs_are_diagnosed_and_compared(two_runs):
    a, b, base = two_runs
    out = base / "cmp"
    result = runner.invoke(app, ["diagnose", str(a), str(b), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    for run in (a, b):
        rep = json.loads((run / "diagnostics.json").read_text())
        r = rep["representation"]
        assert r["layer"] == "head-input" and r["output_dim"] > 0
        assert r["spectrum"]["images"] == 60 and r["spectrum"]["fit"]["alpha"] is not None
        assert r["noise_spectrum"]["fit"]["window"] == [11, 100]
        assert r["jacobian"]["method"] == "exact" and len(r["jacobian"]["norms"]) == 8
        assert set(r["critical"]) == {"noise", "fgsm", "pgd"}
        assert len(r["critical"]["pgd"]["relative_accuracy"]) == 4
        assert rep["psr"] == {} and any("layer-wise section skipped" in n for n in rep["notes"])
        for name in ("power-law", "jacobian", "critical", "critical-accuracy"):
            assert (run / f"diagnose-{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    cmp = json.loads((out / "diagnose-compare.json").read_text())
    assert list(cmp["runs"]) == ["a/run", "b/run"]
    ea, eb = cmp["runs"]["a/run"], cmp["runs"]["b/run"]
    assert ea["test_accuracy"] is not None and ea["alpha_data"] == eb["alpha_data"]
    assert set(ea["median_crit_norm"]) == {"noise", "fgsm", "pgd"}
    for name in ("power-law", "jacobian", "critical", "critical-accuracy", "crit-vs-accuracy"):
        assert (out / f"diagnose-compare-{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "comparison" in result.output and "a/run" in result.output


@pytest.mark.parametrize("args, message", [
    (["--layer", "nope"], "'nope' is not a module of this model"),
    (["--projections", "many"], "--projections takes"),
    (["--projections", "0"], "--projections must be"),
    (["--critical-attacks", "cw"], "'cw' is not known"),
    (["--no-representation", "--no-layerwise"], "nothing to diagnose"),
    (["--spectrum-images", "1"], "--spectrum-images must be >= 2"),
])
def test_bad_options_give_one_clean_error(two_runs, args, message):
    result = runner.invoke(app, ["diagnose", str(two_runs[0]), *FAST, *args])  # args win
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_bad_layer_lists_valid_names(two_runs):
    result = runner.invoke(app, ["diagnose", str(two_runs[0]), "--layer", "backbone.nett",
                                 *FAST])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "head-input" in text and "backbone.net.0" in text


def test_several_runs_need_out(two_runs):
    a, b, _ = two_runs
    result = runner.invoke(app, ["diagnose", str(a), str(b), *FAST])
    assert result.exit_code == 2 and "give --out DIR" in result.output, result.output
    result = runner.invoke(app, ["diagnose", str(a), str(b), "--out", "x", "--report-dir", "y"])
    assert result.exit_code == 2 and "--report-dir takes a single run" in result.output


def test_run_labels_disambiguate(tmp_path):
    assert run_labels([tmp_path / "x" / "r", tmp_path / "y" / "s"]) == ["r", "s"]
    assert run_labels([tmp_path / "x" / "r", tmp_path / "y" / "r"]) == ["x/r", "y/r"]
    assert run_labels([tmp_path / "r", tmp_path / "r"]) == [f"{tmp_path.name}/r",
                                                            f"{tmp_path.name}/r (2)"]


def test_hash_runs_skip_the_critical_perturbations(tiny_run, tmp_path):
    run = copy_run(tiny_run("hash", "frsf"), tmp_path / "hash")
    rep = diagnose_run(run, device="cpu", layerwise_section=False, plot=False,
                       spectrum_images=30, probe_images=4)
    r = rep["representation"]
    assert r["critical"] is None and r["jacobian"]["median"] > 0
    assert any("critical perturbations skipped" in n for n in rep["notes"])
