"""Workflows on run folders: evaluate a finished run, attack it.

These sit above ``train`` and ``eval``: they load a run's config and selected model
(:func:`retrieval_bio.train.load_run`), call the pure evaluation code
(:mod:`retrieval_bio.eval`), and merge the results into the run folder. ``cli.py`` and the
demo call them; library users may too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .eval.encode import accuracy, encode
from .eval.plots import attack_plot, line_plot
from .eval.report import CODES, load_codes, retrieval_report
from .eval.robustness import (
    CLASSIFY_ATTACKS,
    DEFAULT_BATCH,
    HASH_ATTACKS,
    attack_task,
    default_eps,
    report_paths,
    subsample,
    sweep_classify,
    sweep_hash,
)
from .progress import Progress
from .runs import CONFIG, atomic_write_json, read_json, update_metrics
from .train import load_run, resolve_device
from .train.pipeline import retrieval_k


def evaluate_run(
    run_dir: str | Path, *, k: int | None = None, radius: int = 2,
    device: torch.device | str = "auto", progress: Progress | None = None,
) -> dict[str, Any]:
    """Re-evaluate a finished run and merge the result into its ``metrics.json``.

    Hashing runs: every SPEC §5 metric from ``codes.npz`` (``k`` defaults to the run's own),
    the PR curve also plotted to ``pr_curve.png``. Classification runs: test accuracy of the
    selected model on the query split.
    """
    run_dir = Path(run_dir)
    cfg = RunConfig.load(run_dir / CONFIG)
    if cfg.task == "hash":
        if k is None:
            k = read_json(run_dir / "metrics.json").get("k", cfg.k if cfg.k is not None else 0)
        report = retrieval_report(load_codes(run_dir / CODES), k, radius)
        _plot_pr(run_dir / "pr_curve.png", report["pr_curve"], cfg)
    else:
        dev = resolve_device(device)
        cfg, model, splits = load_run(run_dir, device=dev)
        logits, labels, _ = encode(model, splits.query, batch_size=max(cfg.batch_size, 128),
                                   device=dev, progress=progress, description="test")
        report = {"test_accuracy": accuracy(logits, labels)}
    update_metrics(run_dir, **report)
    return report


def _plot_pr(path: Path, curve: dict[str, list[float]], cfg: RunConfig) -> None:
    line_plot(path, {f"{cfg.rule} ({cfg.bits} bits)": (curve["recall"], curve["precision"])},
              xlabel="recall", ylabel="precision",
              title=f"Precision-recall over Hamming radii: {cfg.backbone} on {cfg.dataset}")


def attack_run(
    run_dir: str | Path, attack: str, eps: Sequence[float] | None = None, *,
    grads: Sequence[str] = ("exact", "model"), steps: int | None = None,
    preset: str | None = None, max_queries: int | None = None,
    batch_size: int = DEFAULT_BATCH, device: str = "auto", seed: int = 0,
    attack_kwargs: dict[str, Any] | None = None, plot: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Attack the trained model of a run folder and write ``attack-<name>.json`` (and, with
    ``plot``, ``attack-<name>.png``) into it.

    Hashing runs take ``hag``/``sdha``, classification runs ``fgsm``/``pgd``/``square``. The
    queries are the run's query split (``max_queries``: a seeded subsample of that many);
    hashing attacks are scored against the run's database split, encoded afresh with the
    loaded model so that clean and adversarial codes come from the same computation.

    Args:
        run_dir: a finished run folder (``config.yaml`` + ``best.pt``).
        attack: attack name.
        eps: L∞ budgets in [0, 1] pixels; ``None``: :func:`default_eps`.
        grads: gradient sources; for a BP run they coincide and are computed once.
        steps, preset: see :func:`sweep_hash` / :func:`sweep_classify`; ``preset`` is for
            hashing attacks only.
        max_queries: attack only this many queries (seeded by ``seed``).
        batch_size: attack batch size (results do not depend on it for HAG/SDHA, whose loss
            is normalised by a fixed reference batch).
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"mps"``.
        seed: the attack's seed and the query subsample's.

    Returns:
        The report (module docstring), as written to the JSON file.
    """
    task = attack_task(attack)
    if preset is not None and task != "hash":
        raise ValueError(f"--preset applies to hashing attacks (hag, sdha), not {attack!r}")
    eps = default_eps(attack, preset) if eps is None else [float(e) for e in eps]
    if any(e < 0 for e in eps):
        raise ValueError(f"eps must be >= 0, got {eps}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    cfg, model, splits = load_run(run_dir, device=dev)
    if cfg.task != task:
        raise ValueError(
            f"{attack!r} attacks {task} models but {run_dir} is a {cfg.task} run; use "
            f"{' | '.join(HASH_ATTACKS if cfg.task == 'hash' else CLASSIFY_ATTACKS)}"
        )
    queries = subsample(splits.query, max_queries, seed)
    common = dict(grads=grads, same_grads=cfg.rule == "bp", steps=steps,
                  batch_size=batch_size, device=dev, seed=seed, attack_kwargs=attack_kwargs,
                  progress=progress)
    if task == "hash":
        report = sweep_hash(model, attack, eps, queries=queries, database=splits.database,
                            train=splits.train, k=retrieval_k(cfg, splits), preset=preset,
                            **common)
    else:
        report = sweep_classify(model, attack, eps, queries=queries, **common)
    report.update(rule=cfg.rule, seed=int(seed), dataset=cfg.dataset, backbone=cfg.backbone,
                  bits=cfg.bits if task == "hash" else None, run=str(Path(run_dir)),
                  device=str(dev), time_s=round(time.perf_counter() - t0, 2))
    json_path, png_path = report_paths(run_dir, attack)
    atomic_write_json(json_path, report)
    if plot:
        attack_plot(png_path, report)
    return report
