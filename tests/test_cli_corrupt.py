"""CLI smoke tests of 'retrieval-bio corrupt' on a tiny real run: the table, the files
written, the official-arrays path, and one-line errors (no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import copy_run
from typer.testing import CliRunner

from retrieval_bio.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    return copy_run(tiny_run("classify", "bp"), tmp_path_factory.mktemp("cli-corrupt") / "run")


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})
    return result, result.output


def test_corrupt_prints_table_and_writes_report(run):
    result, out = invoke("corrupt", run, "--corruptions", "contrast,gaussian_noise",
                         "--severities", "1,5", "--num-images", "16", "--device", "cpu")
    assert result.exit_code == 0, out
    for text in ("gaussian_noise", "contrast", "sev 1", "sev 5", "mean", "clean",
                 "report:", "heat map:", "16 images per cell"):
        assert text in out
    (path,) = run.glob("corruption-*.json")
    assert f"report: {path}" in out and path.with_suffix(".png").is_file()
    rep = json.loads(path.read_text())
    assert rep["corruptions"] == ["gaussian_noise", "contrast"] and rep["severities"] == [1, 5]
    # the same command again reuses every cell
    result, out = invoke("corrupt", run, "--corruptions", "contrast", "--severities", "5",
                         "--num-images", "16", "--device", "cpu")
    assert result.exit_code == 0 and "already computed" in " ".join(out.split())


def test_corrupt_official_arrays(run, tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(rng.integers(0, 10, 3), 5).astype(np.uint8))
    np.save(root / "fog.npy", rng.integers(0, 256, (15, 32, 32, 3), dtype=np.uint8))
    result, out = invoke("corrupt", run, "--root", root, "--severities", "3", "--device",
                         "cpu", "--out", tmp_path)
    assert result.exit_code == 0, out
    assert "official" in out and "fog" in out and "resized" in out
    assert len(list(tmp_path.glob("corruption-*.png"))) == 1


@pytest.mark.parametrize(("args", "message"), [
    (("--root", "{missing}"), "CIFAR-C folder not found"),
    (("--severities", "0,3"), "severity must be one of 1, 2, 3, 4, 5"),
    (("--severities", "1,x"), "--severities takes whole numbers"),
    (("--corruptions", "snow"), "load the official CIFAR-C arrays instead (--root DIR)"),
    (("--corruptions", "blur"), "unknown corruption 'blur'"),
])
def test_corrupt_errors_are_one_line(run, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "nope") for a in args]
    result, out = invoke("corrupt", run, *args, "--device", "cpu")
    assert result.exit_code == 2, out
    assert message in " ".join(out.split()) and "Traceback" not in out
    assert out.startswith("error:")


def test_corrupt_refuses_a_hashing_run(tiny_run):
    result, out = invoke("corrupt", tiny_run("hash", "bp"), "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in out
    assert "hash run: corruption accuracy needs a classification run" in " ".join(out.split())


def test_list_shows_corruptions():
    result, out = invoke("list", "corruptions")
    assert result.exit_code == 0
    for name in ("gaussian_noise", "glass_blur", "zoom_blur", "motion_blur", "frost"):
        assert name in out
    assert "official arrays only" in out
