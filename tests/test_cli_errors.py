"""The command line as a newcomer meets it: every user mistake or broken file gives one
plain-text error naming the input and the fix (exit 2), never a traceback (unless --debug);
paths, quotes and YAML positions are shown exactly; every config key has a flag."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest
import torch
from helpers import copy_run
from typer.testing import CliRunner

from retrieval_bio import __version__
from retrieval_bio.cli import app
from retrieval_bio.config import RunConfig
from retrieval_bio.index import HammingIndex
from retrieval_bio.runs import read_json

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return r, " ".join(r.output.split())


@pytest.fixture
def hash_run(tiny_run, tmp_path):
    return copy_run(tiny_run("hash", "frsf"), tmp_path / "run [1]")


def _flags(command: str) -> set[str]:
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    return set(re.findall(r"--[a-z][a-z0-9-]*", r.output))


def test_every_config_key_has_a_flag_and_version():
    flags = _flags("finetune")
    for f in dataclasses.fields(RunConfig):
        if f.name == "stage":
            continue  # the command is the stage
        special = {"dataset_options": "--data-opt", "learner_options": "--learner-opt",
                   "model_options": "--model-opt", "frontend_options": "--frontend-opt"}
        flag = special.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in flags, f.name
    for pair in ("--augment", "--no-augment", "--amp", "--no-amp", "--resume", "--no-resume",
                 "--skip-bad", "--no-skip-bad"):
        assert pair in flags
    assert {"--weight-decay", "--num-workers", "--betas", "--index"} <= flags
    r, out = invoke("--version")
    assert r.exit_code == 0 and out == f"retrieval-bio {__version__}"


def test_paths_quotes_and_yaml_positions_are_shown_exactly(tmp_path):
    missing = tmp_path / "runs [a]" / "x"
    r, out = invoke("evaluate", missing)
    assert r.exit_code == 2 and f"{missing} is not a run folder" in out
    r, out = invoke("finetune", "--rule", "xyz", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "rule='xyz' is not valid" in out
    bad = tmp_path / "bad [cfg].yaml"
    bad.write_text("epochs: 3\nlr_head: [1e-3\n")
    r, out = invoke("finetune", "--config", bad)
    assert r.exit_code == 2 and str(bad) in out and re.search(r"line \d+, column \d+", out)
    assert "Traceback" not in r.output


def test_one_error_line_and_no_spurious_exit_code(hash_run):
    r = runner.invoke(app, ["attack", "hag", str(hash_run), "--eps", "0.1,abc"])
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error")]
    assert r.exit_code == 2 and len(lines) == 1 and "comma-separated" in lines[0]
    assert "error: 2" not in r.output


@pytest.mark.parametrize(("args", "message"), [
    (("attack", "hag", "{run}", "--eps", "1.5"), r"--eps must lie in [0, 1]"),
    (("attack", "hag", "{run}", "--steps", "0"), "--steps must be >= 1"),
    (("attack", "square", "{run}", "--steps", "5"), "--queries-per-image"),
    (("attack", "hag", "{run}", "--queries-per-image", "5"), "hag takes --steps"),
    (("attack", "fgsm", "{run}"), "hash run"),
    (("pretrain", "--data-opt", "lits=/x", "--out", "{tmp}/d"), "--data-opt lits"),
    (("pretrain", "--betas", "0.9", "--out", "{tmp}/b"), "--betas takes two numbers"),
    (("pretrain", "--device", "gpu", "--out", "{tmp}/g"), "cuda:N"),
    (("pretrain", "--seed", "-1", "--out", "{tmp}/s"), "seed must be >= 0"),
    (("attack", "hag", "{run}", "--seed", "-1"), "--seed must be >= 0"),
    (("pretrain", "--data-opt", "counts=5", "--out", "{tmp}/c"), "not an option of dataset"),
    (("pretrain", "--protocol", "xyz", "--out", "{tmp}/p"), "one protocol"),
    (("evaluate", "{run}", "--radius", "-1"), "--radius must be >= 0"),
    (("attack", "hag", "{run}", "--eps", "0.1", "--report-dir", "{run}/metrics.json"),
     "--report-dir"),
])
def test_user_mistakes(hash_run, tmp_path, args, message):
    r, out = invoke(*(a.format(run=hash_run, tmp=tmp_path) for a in args))
    assert r.exit_code == 2, out
    assert message in out and "Traceback" not in r.output
    # a failed start leaves no half-made run folder beside the fixture's run
    assert [p.name for p in tmp_path.iterdir()] == [hash_run.name]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path):
    r, out = invoke("pretrain", "--device", "cuda", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "CUDA is unavailable" in out and "--device cpu" in out
    r, out = invoke("pretrain", "--device", "cuda:1", "--out", tmp_path / "c1")
    assert r.exit_code == 2 and "CUDA is unavailable" in out


def test_damaged_run_files_are_named_with_the_fix(hash_run):
    codes = hash_run / "codes.npz"
    codes.write_bytes(codes.read_bytes()[:100])  # truncated
    r, out = invoke("evaluate", hash_run)
    assert r.exit_code == 2 and str(codes) in out and "--encode" in out
    r, out = invoke("evaluate", hash_run, "--encode", "--device", "cpu")  # the fix works
    assert r.exit_code == 0, out
    (hash_run / "metrics.json").write_text('{"k": 0,\n "history": [}')
    r, out = invoke("evaluate", hash_run)
    assert r.exit_code == 2 and "metrics.json is not valid JSON" in out and "line 2" in out
    (hash_run / "config.yaml").write_text("task: hash\nbits: [16\n")
    r, out = invoke("attack", "hag", hash_run, "--eps", "0.1")
    assert r.exit_code == 2 and "config.yaml is not valid YAML" in out and "line" in out
    r = runner.invoke(app, ["--debug", "attack", "hag", str(hash_run), "--eps", "0.1"])
    assert r.exit_code == 2 and "Traceback" in r.output  # --debug shows it


def test_evaluate_at_k_zero_and_k_and_index_kind(hash_run):
    r, out = invoke("evaluate", hash_run, "--k", "5", "--radius", "3")
    m = read_json(hash_run / "metrics.json")
    assert r.exit_code == 0 and "mAP@5" in out and 0 <= m["recall@k"] < 1
    r, out = invoke("evaluate", hash_run, "--k", "0")
    assert r.exit_code == 0 and "mAP@all" in out
    m = read_json(hash_run / "metrics.json")
    # base rate and 1 are not reported at k = 0, and the k = 5 numbers are not left behind
    assert "precision@k" not in m and "recall@k" not in m and "precision@h<=3" not in m
    r, out = invoke("evaluate", hash_run, "--encode", "--index", "multihash", "--device", "cpu")
    assert r.exit_code == 0, out
    assert HammingIndex.load(hash_run / "database.index").kind == "multihash"


def test_square_budget_flag_and_report_command(tiny_run, tmp_path):
    run = copy_run(tiny_run("classify", "bp"), tmp_path / "cls")
    r, out = invoke("attack", "square", run, "--eps", "0.3", "--queries-per-image", "10",
                    "--num-images", "10", "--device", "cpu")
    assert r.exit_code == 0, out
    assert "10 model queries/image" in out and "report:" in out
    (path,) = run.glob("attack-square-*.json")
    r, out = invoke("report", run)
    assert r.exit_code == 0 and str(path) in out and "test_accuracy" in out


def test_ctrl_c_in_an_attack_says_what_is_kept(hash_run, monkeypatch):
    import retrieval_bio.workflows as workflows

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflows, "attack_run", interrupted)
    r, out = invoke("attack", "hag", hash_run, "--eps", "0.1")
    assert r.exit_code == 130 and "run the same command again to continue" in out


def test_second_run_into_the_same_folder_is_refused(hash_run, tmp_path):
    out_dir = tmp_path / "again"
    shutil.copytree(hash_run, out_dir)
    r, out = invoke("finetune", "--out", out_dir)
    assert r.exit_code == 2 and "already holds a run" in out and "--resume" in out


def test_training_prints_each_epoch_and_draws_its_curve(tmp_path):
    import matplotlib.image

    r, out = invoke("pretrain", "--backbone", "small-cnn", "--image-size", "8", "--epochs", "2",
                    "--batch-size", "64", "--device", "cpu", "--out", tmp_path / "p")
    assert r.exit_code == 0, out
    history = read_json(tmp_path / "p" / "metrics.json")["history"]
    for h in history:  # one plain line per epoch, with its validation metric, not a dict
        assert f"epoch {h['epoch']}/2 loss {h['loss']:.4g} val_accuracy" in out
    assert "{'epoch'" not in out
    img = matplotlib.image.imread(tmp_path / "p" / "training_curve.png")
    assert img.shape[0] > 200 and img[..., :3].std() > 0.05


def test_other_weights_never_replace_the_selected_epochs_results(hash_run):
    before = read_json(hash_run / "metrics.json")
    codes = (hash_run / "codes.npz").read_bytes()
    r, out = invoke("evaluate", hash_run, "--weights", "last", "--device", "cpu")
    assert r.exit_code == 0, out
    assert "checkpoint.pt (epoch 1)" in out
    after = read_json(hash_run / "metrics.json")
    assert (hash_run / "codes.npz").read_bytes() == codes
    assert after["map@k"] == before["map@k"]
    assert "checkpoint.pt (epoch 1)" in after["evaluations"]
