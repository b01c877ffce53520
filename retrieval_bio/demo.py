"""The end-to-end demo on scikit-learn's bundled digits (no download).

BP pre-training of a small CNN; BP and frSF fine-tunes of that same backbone behind a HyP²
hash head; the database codes indexed with FAISS; mAP@k and the other SPEC §5 metrics; HAG
and SDHA at a few ε with both gradient sources (exact, through W, and the model's own
feedback path); and one comparison table per attack. Every stage writes its run folder
under ``out``; re-running the demo reuses the training stages already finished there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .eval import precision_at_k
from .eval.compare import compare_runs
from .eval.report import CODES, load_codes
from .index import HammingIndex
from .progress import Progress
from .runs import CONFIG, METRICS, read_json, run_finished
from .train import train_run
from .train.pipeline import INDEX
from .workflows import attack_run, evaluate_run

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Sizes of the demo; the defaults finish in about 10 s on 2 CPU cores."""

    backbone: str = "small-cnn"
    image_size: int = 16  # digits are 8x8 px; 16 px keeps the demo fast
    bits: int = 32
    pretrain_epochs: int = 4
    finetune_epochs: int = 4
    rules: tuple[str, ...] = ("bp", "frsf")
    attacks: tuple[str, ...] = ("hag", "sdha")
    eps: tuple[float, ...] = (0.01, 0.05, 0.1)
    steps: int = 5
    max_queries: int = 100
    seed: int = 0
    device: str = "auto"
    # A fixed thread count makes the printed numbers the same on every machine (float sums
    # depend on how many threads split them); 2 rather than 1 because it is faster on a
    # 2-core machine (benchmarks/demo_threads.py: 7.6 s against 11.5 s). None: torch's own.
    threads: int | None = 2
    extra: dict[str, Any] = field(default_factory=dict)


def _train(cfg: RunConfig, progress: Progress | None) -> dict[str, Any]:
    """Train ``cfg`` unless its run folder already holds a finished run of the same config."""
    run_dir = Path(cfg.out)
    if run_finished(run_dir) and (run_dir / CONFIG).is_file() and \
            RunConfig.load(run_dir / CONFIG) == cfg:
        log.info("reusing the finished run in %s", run_dir)
        return read_json(run_dir / METRICS)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} holds another run; pass another --out to the demo")
    return train_run(cfg, progress=progress).metrics


def index_check(run_dir: Path, k: int = 10) -> dict[str, Any]:
    """Search the run's FAISS index for every query and check that the top-k precision it
    gives equals :func:`precision_at_k` computed without FAISS (same (distance, id) order)."""
    codes = load_codes(run_dir / CODES)
    index = HammingIndex.load(run_dir / INDEX)
    _, ids = index.search(codes["query_codes"], k)
    rel = (codes["query_labels"][:, None, :] & codes["db_labels"][ids]).any(-1)
    faiss_p = float(rel.mean())
    metric_p = float(precision_at_k(codes["query_codes"], codes["db_codes"],
                                    codes["query_labels"], codes["db_labels"], k))
    return {"k": k, "faiss_precision": faiss_p, "metric_precision": metric_p,
            "agree": bool(np.isclose(faiss_p, metric_p)), "ntotal": index.ntotal}


def run_demo(
    out: str | Path = "runs/demo", settings: DemoSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns (and writes to ``out/demo.json``) a summary:
    per rule the retrieval metrics and the FAISS check, per attack the comparison."""
    s = settings or DemoSettings()
    previous = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _run_demo(Path(out), s, progress)
    finally:
        torch.set_num_threads(previous)


def _run_demo(out: Path, s: DemoSettings, progress: Progress | None) -> dict[str, Any]:
    from .runs import atomic_write_json

    common = dict(backbone=s.backbone, dataset="digits", image_size=s.image_size,
                  seed=s.seed, device=s.device, batch_size=32)
    pre = RunConfig.from_dict({**common, "stage": "pretrain", "task": "classify",
                               "epochs": s.pretrain_epochs, "lr_backbone": 1e-3,
                               "lr_head": 1e-3, "out": str(out / "pretrain")})
    summary: dict[str, Any] = {"pretrain": {
        k: _train(pre, progress).get(k)
        for k in ("val_accuracy", "test_accuracy")}}
    runs: dict[str, Path] = {}
    summary["retrieval"] = {}
    for rule in s.rules:
        cfg = RunConfig.from_dict({
            **common, "stage": "finetune", "task": "hash", "rule": rule, "bits": s.bits,
            "init": str(out / "pretrain"), "epochs": s.finetune_epochs,
            # the backbone was pre-trained on these 1,000 digits: a 10x larger rate than
            # SPEC §3's ImageNet protocol keeps the demo's fine-tune to a few epochs
            "lr_backbone": 1e-4, "lr_head": 1e-3, "out": str(out / f"hash-{rule}")})
        _train(cfg, progress)
        runs[rule] = Path(cfg.out)
        report = evaluate_run(cfg.out, device=s.device, progress=progress)
        summary["retrieval"][rule] = {
            **{k: report.get(k) for k in ("map@k", "map@k_expected_ties", "precision@h<=2",
                                          "precision@k", "k")},
            "index": index_check(Path(cfg.out))}
    notes: list[str] = []
    for run_dir in runs.values():
        for attack in s.attacks:
            report = attack_run(run_dir, attack, list(s.eps), grads=("exact", "model"),
                                steps=s.steps, max_queries=s.max_queries, device=s.device,
                                seed=s.seed, progress=progress)
            notes += [n for n in report["notes"] if n not in notes]
    summary["notes"] = notes
    summary["compare"] = compare_runs(list(runs.values()), out / "compare")
    atomic_write_json(out / "demo.json", summary)
    return summary
