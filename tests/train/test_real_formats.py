"""Whole runs on real on-disk formats, not only on the bundled digits: BP pre-training and
HyP² hash fine-tuning on a HashNet list-file dataset and on an MS-COCO instances-JSON
fixture (one of them through ``retrieval-bio finetune --config``). The run folder's files are
compared with the ground truth the fixture writers recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
from fixtures import COCO_IDS, write_coco_dataset, write_list_dataset  # noqa: E402

from retrieval_bio.cli import app  # noqa: E402
from retrieval_bio.config import RunConfig  # noqa: E402
from retrieval_bio.eval import map_at_k  # noqa: E402
from retrieval_bio.eval.encode import encode  # noqa: E402
from retrieval_bio.eval.report import load_codes  # noqa: E402
from retrieval_bio.losses import LOSSES  # noqa: E402
from retrieval_bio.runs import read_json  # noqa: E402
from retrieval_bio.train import load_run, train_run  # noqa: E402
from retrieval_bio.train.pipeline import load_splits  # noqa: E402

BITS = 16
BASE = dict(backbone="small-cnn", image_size=16, batch_size=8, lr_backbone=1e-3, lr_head=1e-3,
            amp=False, device="cpu")


@pytest.fixture(scope="module")
def list_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("listdata")
    truth = write_list_dataset(root, n_classes=5, n_train=16, n_test=6, n_database=20, size=16)
    labels = {str(root / rel): vec for part in truth.values() for rel, vec in part.items()}
    return root, labels


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocodata")
    truth = write_coco_dataset(root, n_images=36, n_unlabelled=3, size=16)
    column = {c: i for i, c in enumerate(sorted(COCO_IDS))}
    labels = {}
    for path, cats in truth.items():
        vec = np.zeros(80, np.uint8)
        vec[[column[c] for c in cats]] = 1
        labels[path] = vec
    return root, labels


LIST_OPTS = {"counts": {"validation": 4}}
COCO_OPTS = {"counts": {"train": 14, "query": 6, "validation": 5}}


def _pretrain(tmp: Path, dataset: str, root: Path, opts: dict):
    cfg = RunConfig.from_dict({**BASE, "stage": "pretrain", "task": "classify", "epochs": 1,
                               "dataset": dataset, "root": str(root), "dataset_options": opts,
                               "out": str(tmp / f"pretrain-{dataset}")})
    return train_run(cfg)


def _check_run_folder(run_dir: Path, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """config.yaml reloads; metrics.json has map@k; codes.npz has the split sizes, ±1 int8
    codes and, per id, the fixture's labels of that split item."""
    cfg = RunConfig.load(run_dir / "config.yaml")
    metrics = read_json(run_dir / "metrics.json")
    splits = load_splits(cfg)  # the saved config rebuilds the very same splits
    codes = load_codes(run_dir / "codes.npz")
    for prefix, split in (("query", splits.query), ("db", splits.database)):
        n = len(split)
        assert codes[f"{prefix}_codes"].shape == (n, cfg.bits)
        assert codes[f"{prefix}_codes"].dtype == np.int8
        assert set(np.unique(codes[f"{prefix}_codes"])) <= {-1, 1}
        assert sorted(codes[f"{prefix}_ids"]) == list(range(n))
        expected = np.stack([truth[split.paths[i]] for i in codes[f"{prefix}_ids"]])
        assert np.array_equal(codes[f"{prefix}_labels"], expected)
    args = (codes["query_codes"], codes["db_codes"], codes["query_labels"], codes["db_labels"])
    assert metrics["map@k"] == pytest.approx(map_at_k(*args, metrics["k"]))
    assert 0 < metrics["map@k"] <= 1
    return codes


def test_list_file_dataset_pretrain_then_hash_finetune(list_data, tmp_path):
    root, truth = list_data
    pre = _pretrain(tmp_path, "list", root, LIST_OPTS)
    assert pre.splits.sizes() == {"train": 12, "validation": 4, "query": 6, "database": 20}
    metrics = read_json(pre.run_dir / "metrics.json")
    assert 0 <= metrics["test_accuracy"] <= 1 and len(metrics["history"]) == 1
    assert (pre.run_dir / "config.yaml").is_file()

    cfg = RunConfig.from_dict({**BASE, "stage": "finetune", "task": "hash", "rule": "usf",
                               "bits": BITS, "epochs": 2, "dataset": "list", "root": str(root),
                               "dataset_options": LIST_OPTS, "init": str(pre.run_dir),
                               "out": str(tmp_path / "hash-list")})
    res = train_run(cfg)
    assert len(res.metrics["history"]) == 2
    codes = _check_run_folder(res.run_dir, truth)
    assert codes["query_codes"].shape == (6, BITS) and codes["db_codes"].shape == (20, BITS)


def _qualifying_pairs(labels: np.ndarray) -> int:
    """Brute-force count of HyP²'s pair-term pairs: both items multi-label, no shared label."""
    n = 0
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i].sum() > 1 and labels[j].sum() > 1 and not (labels[i] & labels[j]).any():
                n += 1
    return n


def test_coco_pretrain_then_hash_finetune_through_the_cli(coco_data, tmp_path):
    root, truth = coco_data
    pre = _pretrain(tmp_path, "coco", root, COCO_OPTS)
    assert pre.splits.sizes() == {"train": 14, "validation": 5, "query": 6, "database": 11}
    assert pre.splits.multi_label and pre.splits.num_classes == 80
    assert 0 <= read_json(pre.run_dir / "metrics.json")["test_accuracy"] <= 1

    out = tmp_path / "hash-coco"
    config = tmp_path / "coco-hash.yaml"
    config.write_text(yaml.safe_dump({
        **BASE, "task": "hash", "rule": "frsf", "bits": BITS, "epochs": 1, "dataset": "coco",
        "root": str(root), "dataset_options": COCO_OPTS, "init": str(pre.run_dir),
    }))
    r = CliRunner().invoke(app, ["finetune", "--config", str(config), "--out", str(out)])
    assert r.exit_code == 0, r.output
    codes = _check_run_folder(out, truth)
    assert codes["query_codes"].shape == (6, BITS) and codes["db_codes"].shape == (11, BITS)
    assert RunConfig.load(out / "config.yaml").dataset_options == COCO_OPTS

    # HyP²'s pair term is live on this multi-label data: the train split holds pairs of
    # multi-label items sharing no label, and on the trained model's outputs the term is > 0.
    cfg, model, splits = load_run(out)
    y = splits.train.labels.numpy().astype(bool)
    assert (y.sum(1) > 1).sum() >= 2 and _qualifying_pairs(y) > 0
    h, labels, _ = encode(model, splits.train)
    loss = LOSSES.get("hyp2")(num_classes=80, bits=BITS)
    assert float(loss.pair_term(torch.from_numpy(h), torch.from_numpy(labels))) > 0
