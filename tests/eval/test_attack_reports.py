"""Attack reports on real (tiny) runs are never lost: other settings make another report, an
interrupted sweep keeps its finished cells and continues to the uninterrupted result,
reports name the weights they used, and options are checked before anything is loaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import copy_run
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError
from retrieval_bio.eval.compare import compare_runs
from retrieval_bio.runs import RunFolderError, fallback_dir
from retrieval_bio.workflows import attack_run

pytestmark = pytest.mark.usefixtures("one_thread")
KW = dict(max_queries=30, device="cpu", plot=False)


@pytest.fixture
def run(tiny_run, tmp_path):
    return copy_run(tiny_run("hash", "frsf"), tmp_path / "frsf")


class StopAt:
    """A progress display that presses Ctrl-C when the ``n``-th attack batch is done."""

    def __init__(self, n: int, name: str) -> None:
        self.n, self.name, self.seen, self.current = n, name, 0, ""

    def start(self, description, total):
        self.current = description

    def advance(self, n=1, **fields):
        if self.current == self.name:
            self.seen += 1
            if self.seen == self.n:
                raise KeyboardInterrupt

    def stop(self):
        pass


def test_other_settings_keep_both_reports_and_compare_says_which(run, tmp_path):
    a = attack_run(run, "hag", [0.05], steps=2, **KW)
    b = attack_run(run, "hag", [0.05], steps=4, **KW)
    assert a["path"] != b["path"] and Path(a["path"]).is_file() and Path(b["path"]).is_file()
    assert json.loads(Path(a["path"]).read_text())["steps"] == 2  # not overwritten
    assert a["settings"]["steps"] == 2 and b["settings"]["steps"] == 4
    result = compare_runs([run], tmp_path / "cmp", plot=False)
    entries = result["attacks"]["hag"]["runs"]
    assert {e["report"] for e in entries.values()} == {a["path"], b["path"]}
    assert sorted(entries) == ["frsf [steps=2]", "frsf [steps=4]"]
    assert any("differ in steps" in w for w in result["warnings"])


def test_compare_warns_about_queries_and_lists_runs_without_reports(run, tiny_run, tmp_path):
    other = copy_run(tiny_run("hash", "bp"), tmp_path / "bp")
    bare = copy_run(tiny_run("hash", "bp"), tmp_path / "bare")
    attack_run(run, "hag", [0.05], steps=2, **KW)
    attack_run(other, "hag", [0.05], steps=2, **{**KW, "max_queries": 20})
    result = compare_runs([run, other, bare], tmp_path / "cmp", plot=False)
    assert [r["label"] for r in result["runs"]] == ["frsf", "bp:bp", "bp:bare"]
    assert result["runs"][2]["attacks"] == []
    text = " ".join(result["warnings"])
    assert "differ in num_queries" in text and f"{bare} (bp:bare) has no attack report" in text


def test_interrupted_sweep_keeps_cells_and_continues_to_the_same_result(run, tmp_path):
    eps = [0.02, 0.05, 0.1]
    whole_run = copy_run(run, tmp_path / "whole")
    whole = attack_run(whole_run, "hag", eps, steps=2, **KW)
    with pytest.raises(KeyboardInterrupt):  # one batch per cell: stop inside the 3rd cell
        attack_run(run, "hag", eps, steps=2, progress=StopAt(3, "hag"), **KW)
    (path,) = run.glob("attack-hag-*.json")
    partial = json.loads(path.read_text())
    assert partial["complete"] is False
    assert partial["map"]["exact"][:2] == whole["map"]["exact"][:2]
    assert partial["map"]["exact"][2] is None and partial["map"]["model"] == [None] * 3
    warned = compare_runs([run], tmp_path / "cmp", plot=False)["warnings"]
    assert any("is incomplete" in w for w in warned)
    counter = StopAt(10**9, "hag")
    done = attack_run(run, "hag", eps, steps=2, progress=counter, **KW)
    assert counter.seen == 4  # only the 4 missing cells were attacked
    assert done["complete"] is True
    for key in ("map", "linf", "l2", "grad_calls"):
        assert done[key] == whole[key]
    again = attack_run(run, "hag", eps, steps=2, progress=counter, **KW)
    assert counter.seen == 4 and again["map"] == whole["map"]  # nothing left to do
    assert any("already computed" in n for n in again["notes"])


def test_reports_record_weights_and_refuse_stale_ones(run):
    rep = attack_run(run, "hag", [0.05], steps=2, **KW)
    assert rep["weights"]["file"] == "best.pt" and rep["weights"]["epoch"] == 1
    (run / "best.pt").write_bytes((run / "checkpoint.pt").read_bytes())  # other weights now
    with pytest.raises(ConfigError, match="other weights.*--overwrite"):
        attack_run(run, "hag", [0.05, 0.1], steps=2, **KW)
    stale = compare_runs([run], run / "cmp", plot=False)["warnings"]
    assert any("computed from other weights" in w for w in stale)
    fresh = attack_run(run, "hag", [0.05], steps=2, overwrite=True, **KW)
    assert fresh["weights"]["sha256"] != rep["weights"]["sha256"]
    assert not compare_runs([run], run / "cmp", plot=False)["warnings"]


def test_missing_best_is_an_error_that_points_to_last(run):
    (run / "best.pt").unlink()
    with pytest.raises(RunFolderError, match=r"no best\.pt.*--weights last"):
        attack_run(run, "hag", [0.05], steps=2, **KW)
    rep = attack_run(run, "hag", [0.05], steps=2, weights="last", **KW)
    assert rep["weights"]["file"] == "checkpoint.pt" and rep["settings"]["weights"] == "last"
    r = CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output  # a hashing run's stored codes.npz still evaluates
    r = CliRunner().invoke(app, ["evaluate", str(run), "--weights", "best", "--encode"])
    assert r.exit_code == 2 and "--weights last" in r.output


@pytest.mark.parametrize(("kw", "message"), [
    (dict(eps=[1.5]), r"--eps must lie in \[0, 1\].*1\.5"),
    (dict(eps=[-0.1]), r"--eps must lie in \[0, 1\]"),
    (dict(eps=[float("nan")]), r"--eps must lie"),
    (dict(eps=[0.1], steps=0), "--steps must be >= 1"),
    (dict(eps=[0.1], max_queries=0), "--num-images must be >= 1"),
    (dict(eps=[0.1], grads=("backprop",)), "grad must be one of"),
    (dict(eps=[0.1], preset="fast"), "not a preset"),
])
def test_options_are_checked_before_anything_is_loaded(tmp_path, kw, message):
    # an empty folder: loading anything would fail differently, so the option error is first
    with pytest.raises(ConfigError, match=message):
        attack_run(tmp_path, "hag", device="cpu", **kw)


def _without_override(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` so that permission bits bind: as root, without the capabilities that let
    root ignore them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER are dropped from the
    bounding set before exec, so the new process never holds them)."""
    def drop() -> None:
        if os.geteuid() == 0:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2, 3):  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=drop,
                          timeout=300)


def test_read_only_run_folder_still_prints_and_keeps_results(tiny_run):
    base = Path(tempfile.mkdtemp(prefix="rb-readonly-"))
    try:
        os.chmod(base, 0o755)
        run = copy_run(tiny_run("hash", "frsf"), base / "frsf run [ro]")
        writable = base / "tmp"
        writable.mkdir()
        os.chmod(writable, 0o777)
        for p in [run, *run.iterdir()]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        env = {**os.environ, "TMPDIR": str(writable), "HOME": str(writable),
               "MPLCONFIGDIR": str(writable), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "retrieval_bio.cli", "attack", "hag", str(run), "--eps",
               "0.05", "--steps", "2", "--num-images", "20", "--device", "cpu"]
        r = _without_override(cmd, env)
        assert r.returncode == 0, r.stdout + r.stderr
        out = " ".join((r.stdout + r.stderr).split())
        assert "map (exact)" in out and "0.05" in out  # the table is printed
        assert "cannot be written" in out and "Traceback" not in out
        assert not list(run.glob("attack-*"))  # nothing could land there...
        env_fallback = Path(str(fallback_dir(run)).replace(tempfile.gettempdir(),
                                                           str(writable), 1))
        (report,) = env_fallback.glob("attack-hag-*.json")  # ...it went here instead
        assert json.loads(report.read_text())["map"]["exact"][0] is not None
        r = _without_override([*cmd[:3], "evaluate", str(run)], env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "mAP@all" in r.stdout and "Traceback" not in r.stderr
    finally:
        for p in base.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)
