"""A bad image never throws away a run: one that breaks at the final encode (database
images are read only there) leaves the trained run and a command that finishes the
evaluation with the bad item skipped; one that breaks mid-training leaves a checkpoint
that --resume --skip-bad continues; skipped items are counted in metrics.json."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
from fixtures import write_list_dataset  # noqa: E402

from retrieval_bio.cli import app  # noqa: E402
from retrieval_bio.config import RunConfig  # noqa: E402
from retrieval_bio.datasets import DatasetError  # noqa: E402
from retrieval_bio.runs import CHECKPOINT, load_checkpoint, read_json  # noqa: E402
from retrieval_bio.train import load_splits, train_run  # noqa: E402

runner = CliRunner()
TRAIN = ["--backbone", "small-cnn", "--dataset", "list", "--image-size", "8",
         "--batch-size", "8", "--device", "cpu", "--data-opt", "counts={validation: 8}"]


def _data(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name / "data [v1]"  # brackets and a space: shown exactly in messages
    write_list_dataset(root, n_classes=4, n_train=48, n_test=8, n_database=24, size=8)
    return root


def _break(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")


def test_database_image_breaking_at_the_final_encode(tmp_path, one_thread):
    root = _data(tmp_path, "db")
    bad = root / "images/database_007.jpg"  # line 8 of database.txt
    _break(bad)
    out = tmp_path / "run"
    r = runner.invoke(app, ["finetune", "--task", "hash", "--bits", "16", "--epochs", "2",
                            "--lr-backbone", "1e-3", "--lr-head", "1e-3", *TRAIN, "--root",
                            str(root), "--out", str(out)])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert str(bad) in text and f"{root / 'database.txt'}:8" in text
    assert f"retrieval-bio evaluate {out} --encode --skip-bad" in text
    assert "Traceback" not in text
    # the trained run is kept
    assert (out / "best.pt").is_file()
    assert len(read_json(out / "metrics.json")["history"]) == 2
    r = runner.invoke(app, ["evaluate", str(out), "--encode", "--skip-bad", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    metrics = read_json(out / "metrics.json")
    assert metrics["skipped_items"] == 1 and 0 <= metrics["map@k"] <= 1
    assert metrics["evaluated_weights"]["file"] == "best.pt"
    with np.load(out / "codes.npz") as z:
        assert len(z["db_codes"]) == 23 and len(z["query_codes"]) == 8


def test_training_image_breaking_mid_run_resumes_with_skip_bad(tmp_path, one_thread):
    root = _data(tmp_path, "train")
    out = tmp_path / "run"
    cfg = RunConfig.from_dict(dict(stage="pretrain", task="classify", backbone="small-cnn",
                                   dataset="list", root=str(root), image_size=8, batch_size=8,
                                   epochs=2, device="cpu", out=str(out),
                                   dataset_options={"counts": {"validation": 8}}))
    bad = Path(load_splits(cfg).train.paths[0])  # read again in epoch 2 whatever the order

    def break_at_step_3(model, optimizer, calls=[0]):  # noqa: B006 - a counter
        calls[0] += 1
        if calls[0] == 3:
            _break(bad)  # the file goes bad while the run is going (say, a network disk)

    with pytest.raises(DatasetError) as info:
        train_run(cfg, step_hooks=[break_at_step_3])
    text = " ".join(str(info.value).split())
    line = next(i for i, ln in enumerate((root / "train.txt").read_text().splitlines(), 1)
                if ln.startswith(bad.relative_to(root).as_posix() + " "))
    assert str(bad) in text and f"train.txt:{line}" in text
    assert f"retrieval-bio pretrain --resume --skip-bad --out {out}" in text
    assert load_checkpoint(out / CHECKPOINT)["global_step"] >= 3  # nothing learnt is lost
    r = runner.invoke(app, ["pretrain", "--resume", "--skip-bad", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert RunConfig.load(out / "config.yaml").skip_bad is True  # applied and recorded
    metrics = read_json(out / "metrics.json")
    assert metrics["skipped_items"] == 1 and "test_accuracy" in metrics
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_bad_image_before_any_checkpoint_says_to_start_again(tmp_path, one_thread):
    root = _data(tmp_path, "early")
    for ln in (root / "train.txt").read_text().splitlines():
        _break(root / ln.split()[0])  # every train image: the very first batch fails
    out = tmp_path / "run"
    r = runner.invoke(app, ["pretrain", "--epochs", "1", *TRAIN, "--root", str(root),
                            "--out", str(out)])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "no checkpoint was written yet" in text
    assert f"--config {out / 'config.yaml'} --skip-bad --out {out}" in text
