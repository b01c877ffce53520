"""Sweeps (``retrieval-bio sweep``): grid expansion and validation, a failing cell among
finished ones, re-runs that skip finished cells and attacks, Ctrl-C and resume, the SLURM
submission path through submitit's local executor, the command line."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import RunCalls, torch_threads
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError
from retrieval_bio.runs import BEST, CHECKPOINT, METRICS, RunFolderError, read_json, run_finished
from retrieval_bio.sweeps import (
    ERROR_FILE,
    cell_state,
    expand,
    load_grid,
    parse_grid,
    run_sweep,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: 8-px digits, one epoch: about a second of training per cell on one CPU thread
BASE = {"stage": "train", "task": "classify", "backbone": "small-cnn", "dataset": "digits",
        "image_size": 8, "epochs": 1, "batch_size": 64, "device": "cpu"}
PGD = {"name": "pgd", "eps": [0.03], "steps": 2, "num_images": 32, "grads": ["exact"]}
#: Adam at this head rate blows the loss up within the first 10 steps: the trainer's
#: divergence check stops the run, which only training can find out
DIVERGING = 1000.0
GOOD, BAD = ("lr_head=0.003", "lr_head=0.01"), "lr_head=1000"


def _grid_file(tmp: Path, filename: str = "grid.yaml", **keys) -> Path:
    data = {"base": BASE, "grid": {"lr_head": [3e-3, 1e-2, DIVERGING]}, "attacks": [PGD],
            "out": str(tmp / "out"), **keys}
    path = tmp / filename
    path.write_text(yaml.safe_dump(data))
    return path


#: tiny models train fastest on one thread, and fight other processes least
pytestmark = pytest.mark.usefixtures("one_thread")


# -- the grid -----------------------------------------------------------------------------


def test_expand_is_the_cartesian_product_with_stable_unique_names(tmp_path):
    grid = parse_grid({
        "base": {"stage": "finetune", "image_size": 16},
        "grid": {"backbone": ["small-cnn", "mlp"], "dataset": ["digits"],
                 "rule": ["bp", "frsf", "usf"], "seed": [0, 1],
                 # keys that vary together: one mapping per value
                 "task": [{"task": "hash", "bits": 16}, {"task": "classify"}]},
        "init": "runs/pretrain/{backbone}-{dataset}",
        "attacks": [{"name": "hag", "eps": 0.01}, PGD],
        "out": str(tmp_path / "out"),
    })
    assert len(grid.cells) == 2 * 1 * 3 * 2 * 2
    names = [c.name for c in grid.cells]
    assert len(set(names)) == len(names)
    assert names[:3] == ["small-cnn-digits-bp-s0-hash", "small-cnn-digits-bp-s0-classify",
                         "small-cnn-digits-bp-s1-hash"]
    cell = grid.cells[0]
    cfg = cell.config
    assert (cfg.backbone, cfg.dataset, cfg.rule, cfg.seed, cfg.task, cfg.bits) == (
        "small-cnn", "digits", "bp", 0, "hash", 16)
    assert cfg.image_size == 16 and cfg.stage == "finetune"
    assert cfg.init == "runs/pretrain/small-cnn-digits"
    assert cfg.out == str(tmp_path / "out" / cell.name)
    assert [a.label for a in cell.attacks] == ["hag"]  # each attack on cells of its task
    assert [a.label for a in grid.cells[1].attacks] == ["pgd"]
    assert expand(grid) == grid.cells  # pure: the same cells again, nothing written
    assert not (tmp_path / "out").exists()
    # a template names the folders; filesystem-unsafe characters are replaced
    grid = parse_grid({"base": BASE, "grid": {"backbone": ["timm:resnet18", "small-cnn"]},
                       "name": "{backbone}/{dataset} s{seed}", "out": "o"})
    assert [c.name for c in grid.cells] == ["timm_resnet18_digits_s0", "small-cnn_digits_s0"]


@pytest.mark.parametrize("change, named", [
    ({"grid": {"backbon": ["small-cnn"]}}, ["unknown key 'backbon'", "valid keys"]),
    ({"grid": {"data": [{"dataset": "digits", "roots": "x"}]}}, ["grid.data", "'roots'"]),
    ({"grid": {}}, ["grid is missing or empty"]),
    ({"grid": {"rule": []}}, ["grid.rule is empty"]),
    ({"grid": {"rule": ["bp", "hebbian"]}}, ["cell rule=hebbian", "rule='hebbian'"]),
    ({"grid": {"rule": ["bp", "fa"]}, "name": "{backbone}"},
     ["would share the folder", "name template"]),
    ({"grid": {"rule": ["bp"]}, "name": "{lr}"}, ["{lr}", "not a RunConfig key"]),
    ({"grid": {"out": ["a"]}}, ["sets out"]),
    ({"attacks": [{"name": "hag"}]}, ["attacks hash models", "classify"]),
    ({"attacks": [{"name": "pgd", "epsilon": 0.1}]}, ["'epsilon'", "valid keys"]),
    ({"attacks": [{"name": "pgd", "eps": [2.0]}]}, ["attacks[0]", "eps must lie in [0, 1]"]),
    ({"attacks": [PGD, PGD]}, ["'pgd' is listed twice", "label"]),
    ({"seeds": [0]}, ["'seeds'", "valid keys"]),
    ({"executor": "ray"}, ["executor must be one of local, slurm"]),
    ({"slurm": {"partion": "gpu"}}, ["'partion'", "valid keys"]),
    ({"slurm": {"time": "soon"}}, ["slurm.time"]),
])
def test_bad_grids_are_named(tmp_path, change, named):
    path = _grid_file(tmp_path, **change)
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    msg = str(info.value)
    assert str(path) in msg and all(n in msg for n in named), msg
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_the_example_grids_load():
    for name, cells in (("seed001-digits-pretrain", 1), ("seed001-digits", 8),
                        ("seed001-cifar10", 24)):
        grid = load_grid(CONFIGS / "sweeps" / f"{name}.yaml")
        assert len(grid.cells) == cells, name
    grid = load_grid(CONFIGS / "sweeps" / "seed001-cifar10.yaml")
    cfg = grid.cells[0].config
    assert (cfg.weights, cfg.lr_backbone, cfg.lr_head, cfg.epochs, cfg.image_size) == (
        "imagenet", 1e-5, 1e-4, 20, 224)  # SPEC §3 from the base config file
    assert {c.config.protocol for c in grid.cells} == {"classification", "cifar10"}
    assert grid.slurm["time"] == 24 * 60 and grid.slurm["mem"] == 32.0
    pre = load_grid(CONFIGS / "sweeps" / "seed001-digits-pretrain.yaml").cells[0]
    fine = load_grid(CONFIGS / "sweeps" / "seed001-digits.yaml").cells[0]
    assert fine.config.init == pre.config.out  # the fine-tunes start from the pre-training


def test_the_package_keeps_its_public_names_and_imports_nothing_private():
    """``retrieval_bio.sweeps`` is a package of small modules: every public name stays
    importable from it, and no module imports another's private (``_``) names."""
    import ast

    import retrieval_bio.sweeps as sweeps

    for name in [*sweeps.__all__, "FAILED", "FINISHED", "SUBMITTED", "ERROR_FILE", "CellBusy",
                 "SLURM_KEYS", "GRID_KEYS", "ATTACK_KEYS", "LOCK_FILE", "SUMMARY"]:
        assert getattr(sweeps, name) is not None, name
    package = Path(sweeps.__file__).parent
    for path in [*package.glob("*.py"), package.parent / "grids.py",
                 package.parent / "tradeoff.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


# -- running a sweep ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Three cells: two good head learning rates and one that diverges; PGD on each."""
    tmp = tmp_path_factory.mktemp("sweep")
    with torch_threads(1):
        grid = load_grid(_grid_file(tmp))
        seen: list[dict] = []
        result = run_sweep(grid, on_cell=seen.append)
    return grid, result, seen


def test_a_failing_cell_is_recorded_and_the_others_finish(ran):
    grid, result, seen = ran
    cells = {c["cell"]: c for c in result["cells"]}
    assert list(cells) == [*GOOD, BAD]
    for name in GOOD:
        rec = cells[name]
        assert (rec["status"], rec["train"], rec["error"]) == ("done", "trained", None), rec
        assert run_finished(grid.out / name)
        assert read_json(grid.out / name / METRICS)["test_accuracy"] > 0.5
        [attack] = rec["attacks"]
        assert (attack["attack"], attack["status"]) == ("pgd", "done")
        report = read_json(attack["report"])
        assert report["eps"] == [0.03] and report["num_queries"] == 32
        assert not (grid.out / name / ERROR_FILE).exists()
    bad = cells[BAD]
    assert (bad["status"], bad["train"], bad["attacks"]) == ("failed", "failed", [])
    assert bad["error"].startswith("DivergenceError: training diverged")
    text = (grid.out / BAD / ERROR_FILE).read_text()
    assert text.startswith("training failed: DivergenceError") and "Traceback" in text
    assert bad["error_file"] == str(grid.out / BAD / ERROR_FILE)
    assert not run_finished(grid.out / BAD)
    assert result["counts"] == {"done": 2, "failed": 1} and not result["complete"]
    assert result["failed"] == [{"cell": BAD, "error": bad["error"],
                                 "error_file": bad["error_file"]}]
    for rec in result["cells"]:
        assert rec["started"] <= rec["ended"] and rec["time_s"] >= 0
    on_disk = json.loads((grid.out / "sweep.json").read_text())
    assert on_disk == {k: v for k, v in result.items() if k != "path"}
    # each cell was announced when it started and when it ended
    assert [s["status"] for s in seen] == ["pending", "done", "pending", "done", "pending",
                                           "failed"]
    assert [cell_state(c)[0] for c in grid.cells] == ["finished", "finished", "failed"]


def test_a_rerun_skips_finished_cells_and_retries_failed_ones(ran, monkeypatch):
    grid, first, _ = ran
    files = [grid.out / n / f for n in GOOD for f in (BEST, CHECKPOINT, METRICS)]
    files += [Path(a["report"]) for c in first["cells"] for a in c["attacks"]]
    stamps = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    calls = RunCalls(monkeypatch)
    again = run_sweep(grid)
    assert calls.trained == [(BAD, False)] and calls.attacked == []
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == stamps
    cells = {c["cell"]: c for c in again["cells"]}
    for name in GOOD:
        assert (cells[name]["status"], cells[name]["train"]) == ("skipped", "skipped")
        assert cells[name]["attacks"] == [{"attack": "pgd", "status": "skipped", "report":
                                           first["cells"][GOOD.index(name)]["attacks"][0][
                                               "report"]}]
    assert cells[BAD]["status"] == "failed" and "DivergenceError" in cells[BAD]["error"]
    assert again["counts"] == {"skipped": 2, "failed": 1}


def test_an_attack_added_to_the_grid_runs_once_on_the_finished_cells(ran, tmp_path,
                                                                      monkeypatch):
    grid, _, _ = ran
    out = tmp_path / "out"
    shutil.copytree(grid.out, out)
    more = {**PGD, "eps": [0.03, 0.06], "label": "pgd-2eps"}
    spec = load_grid(_grid_file(tmp_path, attacks=[PGD, more], out=str(out)))
    calls = RunCalls(monkeypatch)
    result = run_sweep(spec, only="lr_head=0.0*")
    assert calls.trained == [] and calls.attacked == list(GOOD)
    for rec in result["cells"][:2]:
        assert [(a["attack"], a["status"]) for a in rec["attacks"]] == [
            ("pgd", "skipped"), ("pgd-2eps", "done")]
        assert read_json(rec["attacks"][1]["report"])["eps"] == [0.03, 0.06]
        assert rec["status"] == "done" and rec["train"] == "skipped"
    # a cell left out keeps what the earlier sweep recorded
    assert result["selected"] == list(GOOD) and result["cells"][2]["status"] == "failed"
    calls = RunCalls(monkeypatch)
    result = run_sweep(spec, only="lr_head=0.0*")
    assert calls.attacked == [] and result["counts"] == {"skipped": 2, "failed": 1}


def test_a_finished_folder_of_another_config_is_refused(ran, tmp_path):
    """The grid was edited (more epochs) but out is the same: the finished cells are not
    reused as if they were the new grid's."""
    grid, _, _ = ran
    out = tmp_path / "out"
    shutil.copytree(grid.out, out)
    spec = load_grid(_grid_file(tmp_path, base={**BASE, "epochs": 2}, out=str(out)))
    result = run_sweep(spec, only=GOOD[0])
    rec = result["cells"][0]
    assert (rec["status"], rec["train"]) == ("failed", "failed")
    assert "holds a run of another config (epochs: 1 there, 2 in the grid)" in rec["error"]


def test_the_slurm_path_runs_the_same_cell_function_in_submitted_jobs(ran, tmp_path,
                                                                      monkeypatch):
    """submitit's LocalExecutor: each cell is pickled into a job that runs in its own
    process, as on SLURM, and its record comes back; finished cells are not submitted."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's torch, as this process's
    grid, _, _ = ran
    out = tmp_path / "out"
    shutil.copytree(grid.out, out)
    (out / BAD / ERROR_FILE).unlink()
    spec = load_grid(_grid_file(tmp_path, out=str(out), executor="slurm",
                                slurm={"cluster": "local", "time": 10, "partition": "gpu"}))
    seen: list[dict] = []
    result = run_sweep(spec, only=f"{GOOD[0]},{BAD}", on_cell=seen.append)
    cells = {c["cell"]: c for c in result["cells"]}
    assert cells[GOOD[0]]["status"] == "skipped" and "job_id" not in cells[GOOD[0]]
    assert result["selected"] == [GOOD[0], BAD]
    bad = cells[BAD]
    assert [s["status"] for s in seen if s["cell"] == BAD] == ["submitted", "failed"]
    assert (bad["status"], bad["train"]) == ("failed", "failed") and bad["job_id"]
    assert bad["error"].startswith("DivergenceError: training diverged")
    assert (out / BAD / ERROR_FILE).read_text().startswith("training failed")  # by the job
    assert Path(bad["log"]).is_file()
    assert read_json(out / "sweep.json")["executor"] == "slurm"


def test_a_job_of_several_tasks_trains_its_cell_data_parallel(tmp_path, monkeypatch):
    """tasks_per_node: 2 through submitit's LocalExecutor: two processes join one gloo
    process group (torchrun's variables from submitit's job environment) and train the
    cell together; rank 0 attacks it and its record is the job's."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = load_grid(_grid_file(tmp_path, grid={"lr_head": [3e-3]}, executor="slurm",
                                slurm={"cluster": "local", "time": 10, "tasks_per_node": 2}))
    [rec] = run_sweep(spec)["cells"]
    assert (rec["status"], rec["train"], rec["ranks"]) == ("done", "trained", 2), rec
    assert rec["attacks"][0]["status"] == "done" and Path(rec["attacks"][0]["report"]).is_file()
    assert read_json(spec.out / "lr_head=0.003" / METRICS)["test_accuracy"] > 0.5


# -- the command line ---------------------------------------------------------------------


def test_cli_runs_a_grid_continues_after_ctrl_c_and_lists_cells(tmp_path, monkeypatch):
    runner = CliRunner()
    path = _grid_file(tmp_path, grid={"rule": ["bp", "fa"]}, attacks=None)
    out = tmp_path / "out"
    r = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "bp" in r.output and "fa" in r.output and "0 of 2 cells finished" in r.output
    assert not out.exists()

    # Ctrl-C in the middle of the second cell's training
    RunCalls(monkeypatch, interrupt="fa")
    r = runner.invoke(app, ["sweep", str(path), "--device", "cpu"])
    assert r.exit_code == 130, r.output
    assert "run the same command again" in r.output.lower()
    assert (out / "fa" / CHECKPOINT).is_file()
    status = {c["cell"]: c["status"] for c in read_json(out / "sweep.json")["cells"]}
    assert status == {"bp": "done", "fa": "interrupted"}
    r = runner.invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "1 of 2 cells finished" in r.output and "partial" in r.output

    # the same command again: bp is skipped, fa resumes from its checkpoint
    calls = RunCalls(monkeypatch)
    r = runner.invoke(app, ["sweep", str(path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert calls.trained == [("fa", True)]
    result = read_json(out / "sweep.json")
    assert result["complete"] and [c["status"] for c in result["cells"]] == ["skipped", "done"]
    assert "1 skipped, 1 done" in r.output or "1 done, 1 skipped" in r.output
    r = runner.invoke(app, ["sweep", str(path), "--dry-run", "--only", "f*"])
    assert r.exit_code == 0 and "1 of 1 cells finished" in r.output


def test_cli_failed_cells_exit_non_zero(ran, tmp_path):
    grid, _, _ = ran
    out = tmp_path / "out"
    shutil.copytree(grid.out, out)
    r = CliRunner().invoke(app, ["sweep", str(_grid_file(tmp_path, out=str(out)))],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    assert "2 skipped, 1 failed" in r.output and "1 cell(s) failed" in r.output
    assert "DivergenceError" in r.output and "Traceback" not in r.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()

    def fails(*args: str, named: str, one_line: bool = True) -> None:
        r = runner.invoke(app, ["sweep", *args])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert r.output.startswith("error: ") and named in r.output, r.output
        assert not one_line or len(r.output.strip().splitlines()) == 1, r.output

    fails(str(tmp_path / "missing.yaml"), named="does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {rule: [bp\n")
    fails(str(bad), named="is not valid YAML", one_line=False)  # then YAML's position
    fails(str(_grid_file(tmp_path, grid={"backbon": ["mlp"]})), named="'backbon'")
    fails(str(_grid_file(tmp_path, grid={})), named="grid is missing or empty")
    fails(str(_grid_file(tmp_path, base={**BASE, "dataset_options": {"countz": 3}})),
          named="dataset_options: countz: not an option of dataset 'digits'")
    fails(str(_grid_file(tmp_path)), "--only", "nothing*", named="matches no cell")
    fails(str(_grid_file(tmp_path)), "--executor", "ray", named="--executor")
    fails(str(_grid_file(tmp_path)), "--device", "tpu", named="device")
    if importlib.util.find_spec("submitit") is not None:
        fails(str(_grid_file(tmp_path)), "--executor", "slurm", named="slurm.time")
    assert not (tmp_path / "out").exists()


def test_run_finished_needs_best_weights_and_the_test_metric_of_the_task(tmp_path):
    def run(metrics: dict | str, best: bool = True) -> Path:
        d = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / METRICS).write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
        if best:
            (d / BEST).write_bytes(b"weights")
        return d

    assert run_finished(run({"task": "classify", "test_accuracy": 0.9}))
    assert run_finished(run({"task": "hash", "map@k": 0.5}))
    assert run_finished(run({"task": "classify", "next_stage": "train the head"}))
    assert not run_finished(run({"task": "hash", "test_accuracy": 0.9}))  # not its metric
    assert not run_finished(run({"task": "classify", "history": [{"epoch": 1}]}))
    assert not run_finished(run({"task": "classify", "test_accuracy": 0.9}, best=False))
    assert not run_finished(tmp_path / "nothing")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        run_finished(run("{"))
