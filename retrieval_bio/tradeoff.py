"""The natural-vs-adversarial trade-off over a learning-rate grid (seed 000, Fig. 2).

A grid file names a base run config, the rules to compare, a learning-rate grid, seeds and
one attack. Every (rule, lr, seed) cell is trained into ``out/<rule>-lr<lr>-s<seed>/`` and
attacked at one ε; per (rule, lr) the natural (test) and adversarial accuracies are averaged
over seeds, and per rule the seed paper's headline statistic is reported: the mean over the
learning rates of (natural − adversarial) accuracy. ``out/tradeoff.json`` holds every cell
and the summary (rewritten atomically after each cell); ``out/tradeoff.png`` draws
adversarial against natural accuracy, one curve per rule. See ``docs/tradeoff.md``.

Cells are independent: one that fails is recorded and the others continue; a re-run skips
the finished cells, resumes a cell whose training was interrupted and retries failed ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, RunConfig
from .grids import IGNORED_KEYS as IGNORED_KEYS  # kept importable from here
from .grids import (
    attack_reports,
    base_config,
    check_mapping,
    check_out_writable,
    check_same_run,
    failure_message,
    load_grid_file,
    no_duplicates,
    out_folder,
    raise_cell_errors,
    train_cell,
)
from .progress import Progress
from .runs import (
    BEST,
    CHECKPOINT,
    METRICS,
    RunFolderError,
    atomic_write_json,
    file_digest,
    read_json,
)

log = logging.getLogger(__name__)

GRID_KEYS = ("base", "rules", "lrs", "lr_keys", "rule_overrides", "seeds", "attack", "out")
ATTACK_KEYS = ("name", "eps", "steps", "alpha", "random_start", "num_images")
#: seed 000 §3.1: PGD, 40 iterations of step 0.1 inside ε = 0.3, from a random start.
PAPER_ATTACK: dict[str, Any] = {"name": "pgd", "eps": 0.3, "steps": 40, "alpha": 0.1,
                                "random_start": True, "num_images": None}
DEFAULT_LR_KEYS = ("lr_backbone", "lr_head")
#: keys every cell sets itself: a rule override may not set them
CELL_KEYS = ("rule", "seed", "out")
#: the attack's seed and the query subsample's: the same for every cell, so that every
#: cell is attacked on the same images
ATTACK_SEED = 0
SUMMARY = "tradeoff.json"
PLOT = "tradeoff.png"

#: cell states (:func:`cell_state`)
NEW, PARTIAL, TRAINED, FINISHED = "new", "partial", "trained", "finished"
#: cell statuses in tradeoff.json
PENDING, RUNNING, COMPUTED, REUSED, FAILED, INTERRUPTED = (
    "pending", "running", "computed", "reused", "failed", "interrupted")


@dataclass(frozen=True)
class AttackSpec:
    """The one attack every cell is measured with (defaults: seed 000's PGD-40)."""

    name: str = "pgd"
    eps: float = 0.3
    steps: int | None = 40
    alpha: float | None = 0.1
    random_start: bool = True
    num_images: int | None = None

    def attack_kwargs(self) -> dict[str, Any]:
        """Constructor options of the attack (PGD's step size and random start)."""
        if self.name != "pgd":
            return {}
        return {"alpha": self.alpha, "random_start": self.random_start}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        steps = f"-{self.steps}" if self.steps is not None and self.name == "pgd" else ""
        extra = ""
        if self.name == "pgd":
            step = "ε/3" if self.alpha is None else f"{self.alpha:g}"
            extra = f", step {step}{', random start' if self.random_start else ''}"
        return f"{self.name.upper()}{steps} ε={self.eps:g}{extra}"


@dataclass(frozen=True)
class Cell:
    """One (rule, lr, seed) point of the grid and the run config that trains it."""

    rule: str
    lr: float
    seed: int
    config: RunConfig = field(compare=False)

    @property
    def name(self) -> str:
        return cell_name(self.rule, self.lr, self.seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class TradeoffGrid:
    """A validated grid (:func:`load_grid`): every cell's config is already built."""

    base: RunConfig
    rules: list[str]
    lrs: list[float]
    seeds: list[int]
    attack: AttackSpec
    out: Path
    lr_keys: list[str] = field(default_factory=lambda: list(DEFAULT_LR_KEYS))
    rule_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: each rule's learning rates (``lrs`` is their union, in order)
    rule_lrs: dict[str, list[float]] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    source: Path | None = None  # the grid file

    def __post_init__(self) -> None:
        self.rule_lrs = self.rule_lrs or {rule: list(self.lrs) for rule in self.rules}

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.source) if self.source else None, "rules": self.rules,
                "lrs": self.rule_lrs, "lr_keys": self.lr_keys, "seeds": self.seeds,
                "rule_overrides": self.rule_overrides, "attack": self.attack.to_dict(),
                "out": str(self.out), "base": self.base.to_dict()}


def cell_name(rule: str, lr: float, seed: int) -> str:
    """``<rule>-lr<lr>-s<seed>``, the cell's folder under ``out``."""
    return f"{rule}-lr{lr:g}-s{seed}"


# -- loading and validating a grid --------------------------------------------------------


def load_grid(path: str | Path) -> TradeoffGrid:
    """Read and validate the grid YAML ``path`` (see ``docs/tradeoff.md``).

    Every key and every cell's :class:`RunConfig` is checked before anything trains: all
    cell errors are reported together.

    Raises:
        ConfigError: naming the file, the key or the cell, and what is accepted.
    """
    return load_grid_file(path, parse_grid, out_root="runs/tradeoff")


def parse_grid(
    data: Any, *, base_dir: str | Path = ".", default_out: str = "runs/tradeoff",
    source: Path | None = None,
) -> TradeoffGrid:
    """A :class:`TradeoffGrid` from the mapping of a grid file; ``base`` paths are relative
    to ``base_dir`` (the grid file's folder), ``out`` to the working directory."""
    check_mapping(data, "a grid", "grid", GRID_KEYS, type(data).__name__)
    if "base" not in data:
        raise ConfigError("base is missing: give a run config file (path relative to the grid "
                          "file) or a mapping of RunConfig keys")
    base = base_config(data["base"], Path(base_dir))
    if base.task != "classify":
        raise ConfigError(f"base: task is {base.task!r}; the trade-off compares natural and "
                          f"adversarial classification accuracy, so set task: classify")
    rules = _str_list(data, "rules", None)
    if len(rules) < 2:
        raise ConfigError(f"rules: give 2 or more rules to compare, got {rules}")
    seeds = _seeds(data.get("seeds", [base.seed]))
    rule_lrs = _rule_lrs(data.get("lrs"), rules, seeds)
    lrs = list(dict.fromkeys(lr for rule in rules for lr in rule_lrs[rule]))
    lr_keys = _str_list(data, "lr_keys", list(DEFAULT_LR_KEYS))
    for key in lr_keys:
        if not isinstance(getattr(base, key, None), float) or key in CELL_KEYS:
            rates = [f.name for f in fields(RunConfig) if f.name.startswith("lr")]
            raise ConfigError(f"lr_keys: {key!r} is not a learning-rate key of RunConfig; "
                              f"use one or more of {', '.join(rates)}")
    overrides = _overrides(data.get("rule_overrides"), rules, lr_keys)
    attack = _attack(data.get("attack"))
    out = out_folder(data, default_out)
    grid = TradeoffGrid(base=base, rules=rules, lrs=lrs, seeds=seeds, attack=attack, out=out,
                        lr_keys=lr_keys, rule_overrides=overrides, rule_lrs=rule_lrs,
                        source=source)
    grid.cells = _cells(grid)
    return grid


def _str_list(data: dict, key: str, default: list[str] | None) -> list[str]:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"{key} is missing: give a list, e.g. {key}: [bp, fa]")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key} must be a list of names, got {value!r}")
    if not value:
        raise ConfigError(f"{key} is empty; give at least one entry")
    no_duplicates(key, value)
    return list(value)


def _rule_lrs(value: Any, rules: list[str], seeds: list[int]) -> dict[str, list[float]]:
    """Each rule's learning rates: one list shared by every rule, or a mapping rule -> list
    (seed 000 picks the learning rates of each rule separately)."""
    if value is None:
        raise ConfigError("lrs is missing: give the learning-rate grid, e.g. lrs: [0.01, 0.1]")
    if not isinstance(value, dict):
        lrs = _lrs(value, rules, seeds, "lrs")
        return {rule: list(lrs) for rule in rules}
    if set(value) != set(rules):
        raise ConfigError(f"lrs: a mapping of learning rates per rule needs exactly the rules "
                          f"({', '.join(rules)}) as keys, got {', '.join(map(str, value))}")
    return {rule: _lrs(value[rule], [rule], seeds, f"lrs.{rule}") for rule in rules}


def _lrs(value: Any, rules: list[str], seeds: list[int], key: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of learning rates, got {value!r}")
    lrs = []
    for i, v in enumerate(value):
        try:
            lr = float(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) \
                else math.nan
        except ValueError:
            lr = math.nan
        if not (math.isfinite(lr) and lr > 0):
            cells = [f"{r}-lr{v}-s{s}" for r in rules for s in seeds]
            shown = ", ".join(cells[:3]) + (", ..." if len(cells) > 3 else "")
            raise ConfigError(f"{key}[{i}] = {v!r} is not a positive learning rate (cells "
                              f"{shown})")
        lrs.append(lr)
    names = [f"{lr:g}" for lr in lrs]
    no_duplicates(f"{key} (as written in folder names)", names)
    return lrs


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"seeds must be a non-empty list of integers, got {value!r}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise ConfigError(f"seeds must be integers >= 0, got {bad[0]!r}")
    no_duplicates("seeds", value)
    return list(value)


def _overrides(value: Any, rules: list[str], lr_keys: list[str]) -> dict[str, dict]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"rule_overrides must map a rule to RunConfig keys, e.g. "
                          f"{{bp: {{loss: mse-softmax}}}}; got {value!r}")
    out = {}
    for rule, keys in value.items():
        if rule not in rules:
            raise ConfigError(f"rule_overrides: {rule!r} is not one of rules "
                              f"({', '.join(rules)})")
        if not isinstance(keys, dict):
            raise ConfigError(f"rule_overrides.{rule} must be a mapping of RunConfig keys, "
                              f"got {keys!r}")
        owned = sorted(set(keys) & (set(CELL_KEYS) | set(lr_keys)))
        if owned:
            raise ConfigError(f"rule_overrides.{rule} sets {', '.join(owned)}, which every "
                              f"cell sets itself (rule, seed, out and lr_keys "
                              f"{', '.join(lr_keys)}); remove it")
        out[rule] = dict(keys)
    return out


def _attack(value: Any) -> AttackSpec:
    from .eval.robustness import DEFAULT_BATCH, attack_task
    from .workflows import check_attack_options

    value = {} if value is None else value
    check_mapping(value, "attack", "attack", ATTACK_KEYS, repr(value))
    name = value.get("name", PAPER_ATTACK["name"])
    if not isinstance(name, str):
        raise ConfigError(f"attack.name must be an attack name, got {name!r}")
    try:
        task = attack_task(name)
    except ValueError as e:
        raise ConfigError(f"attack.name: {e}") from None
    if task != "classify":
        raise ConfigError(f"attack.name: {name!r} attacks hashing models; the trade-off "
                          f"takes a classifier attack (fgsm | pgd | square)")
    if name != "pgd":
        given = [k for k in ("alpha", "random_start") if k in value]
        if given:
            raise ConfigError(f"attack.{given[0]} applies to pgd only, not {name}")
    spec: dict[str, Any] = {**PAPER_ATTACK, **({} if name == "pgd" else {"steps": None}),
                            **value}
    eps = spec["eps"]
    if isinstance(eps, list):
        raise ConfigError(f"attack.eps is one budget (the trade-off is measured at one ε), "
                          f"got {eps!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ConfigError(f"attack.eps must be a number in [0, 1], got {eps!r}")
    for key in ("steps", "num_images"):
        v = spec[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"attack.{key} must be an integer or null, got {v!r}")
    alpha = spec["alpha"]
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha) or alpha <= 0):
        raise ConfigError(f"attack.alpha must be a positive step size or null (ε/3), got "
                          f"{alpha!r}")
    if not isinstance(spec["random_start"], bool):
        raise ConfigError(f"attack.random_start must be true or false, got "
                          f"{spec['random_start']!r}")
    try:
        check_attack_options(name, [float(eps)], grads=("exact",), steps=spec["steps"],
                             preset=None, max_queries=spec["num_images"],
                             batch_size=DEFAULT_BATCH, seed=ATTACK_SEED)
    except ConfigError as e:
        raise ConfigError(f"attack: {e}".replace("--num-images", "num_images")
                          .replace("--eps", "eps").replace("--steps", "steps")) from None
    return AttackSpec(name=name, eps=float(eps), steps=spec["steps"],
                      alpha=None if alpha is None else float(alpha),
                      random_start=spec["random_start"], num_images=spec["num_images"])


def _cells(grid: TradeoffGrid) -> list[Cell]:
    """Every (rule, lr, seed) cell, rules outermost; all cell errors are raised together."""
    cells, errors = [], []
    base = grid.base.to_dict()
    for rule in grid.rules:
        for lr in grid.rule_lrs[rule]:
            for seed in grid.seeds:
                name = cell_name(rule, lr, seed)
                values = {**base, **grid.rule_overrides.get(rule, {}),
                          **{k: lr for k in grid.lr_keys}, "rule": rule, "seed": seed,
                          "out": str(grid.out / name)}
                try:  # RunConfig's own validation: an unknown key or a bad value
                    cells.append(Cell(rule, lr, seed, RunConfig.from_dict(values)))
                except ConfigError as e:
                    errors.append(f"cell {name}: {e}")
    raise_cell_errors(errors)
    return cells


# -- the state of a cell's folder ---------------------------------------------------------


def _same_settings(run_dir: Path, attack: AttackSpec):
    """``(path, report)`` of every attack report in ``run_dir`` made with ``attack``'s
    settings from the best weights (whichever file those were)."""
    want = {"attack": attack.name, "steps": attack.steps, "preset": None,
            "num_images": attack.num_images, "seed": ATTACK_SEED, "weights": "best",
            "attack_kwargs": attack.attack_kwargs()}
    yield from attack_reports(run_dir, attack.name, want)


def _digest(report: Mapping[str, Any]) -> str | None:
    return (report.get("weights") or {}).get("sha256")


def find_report(run_dir: str | Path, attack: AttackSpec) -> dict[str, Any] | None:
    """The attack report in ``run_dir`` made with ``attack``'s settings from the run's
    current ``best.pt`` and holding the exact-gradient accuracy at ``attack.eps``."""
    run_dir = Path(run_dir)
    best = run_dir / BEST
    if not best.is_file():
        return None
    digest = None
    for path, report in _same_settings(run_dir, attack):
        if adversarial_accuracy(report, attack.eps) is None:
            continue
        digest = digest or file_digest(best)
        if _digest(report) == digest:
            report.setdefault("path", str(path))
            return report
    return None


def _stale_report(run_dir: Path, attack: AttackSpec) -> bool:
    """Whether a report of these settings was made from other weights than ``best.pt`` holds
    now (the run was trained again): it is recomputed rather than refused."""
    best = run_dir / BEST
    if not best.is_file():
        return False
    digest = file_digest(best)
    return any(_digest(r) not in (None, digest) for _, r in _same_settings(run_dir, attack))


def adversarial_accuracy(report: Mapping[str, Any], eps: float) -> float | None:
    """Robust accuracy (exact gradient; the only source for a gradient-free attack) at
    ``eps`` in a classify attack report, or ``None`` if it holds none."""
    values = report.get("accuracy") or {}
    source = "exact" if "exact" in values else "none"
    for i, e in enumerate(report.get("eps") or []):
        if float(e) == float(eps):
            row = values.get(source) or []
            return None if i >= len(row) or row[i] is None else float(row[i])
    return None


def cell_state(cell: Cell, attack: AttackSpec) -> tuple[str, dict[str, Any], dict | None]:
    """``(state, metrics, report)`` of a cell's folder: ``finished`` (test accuracy and the
    attack report), ``trained`` (test accuracy, no report yet), ``partial`` (a checkpoint of
    unfinished training) or ``new``.

    Raises:
        RunFolderError: ``metrics.json`` is damaged.
    """
    metrics = read_json(cell.run_dir / METRICS)
    if metrics.get("test_accuracy") is not None:
        report = find_report(cell.run_dir, attack)
        return (FINISHED if report is not None else TRAINED), metrics, report
    if (cell.run_dir / CHECKPOINT).is_file():
        return PARTIAL, metrics, None
    return NEW, metrics, None


def grid_status(grid: TradeoffGrid) -> list[dict[str, Any]]:
    """Per cell ``{cell, run_dir, state, detail}`` without training or attacking anything
    (what ``--dry-run`` lists)."""
    rows = []
    for cell in grid.cells:
        try:
            state, metrics, _ = cell_state(cell, grid.attack)
            detail = {
                FINISHED: "skipped on a re-run",
                TRAINED: "trained; the attack runs next",
                PARTIAL: f"resumes training after epoch {len(metrics.get('history', []))}",
                NEW: "trains from the start",
            }[state]
        except RunFolderError as e:
            state, detail = "damaged", str(e)
        rows.append({"cell": cell.name, "run_dir": str(cell.run_dir), "state": state,
                     "detail": detail})
    return rows


def finished_cells(grid: TradeoffGrid) -> list[str]:
    """Names of the cells whose run and attack report are complete."""
    return [r["cell"] for r in grid_status(grid) if r["state"] == FINISHED]


# -- running ------------------------------------------------------------------------------


def run_tradeoff(
    grid: TradeoffGrid, *, progress: Progress | None = None, device: str | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and attack every cell of ``grid`` that is not finished, in order.

    A finished cell (``metrics.json`` with ``test_accuracy`` and the attack report) is
    skipped; a cell with a checkpoint of unfinished training resumes; a cell that fails
    (any exception but ``KeyboardInterrupt``) is recorded and the next one starts. After
    every cell ``out/tradeoff.json`` is rewritten; at the end ``out/tradeoff.png`` is drawn.

    Args:
        progress: training and attack progress display.
        device: overrides every cell's ``device`` (not part of the run's identity).
        on_cell: called with the cell's record when it starts (status ``running``) and when
            it ends.

    Returns:
        The content of ``tradeoff.json`` (plus ``path``).

    Raises:
        ConfigError: ``device`` is not a device.
        RunFolderError: ``out`` cannot be written.
        KeyboardInterrupt: on Ctrl-C, after ``tradeoff.json`` marks the cell interrupted.
    """
    if device is not None:
        grid.base.replace(device=device)  # validates it before anything runs
    check_out_writable(grid.out)
    records = [_record(c, PENDING) for c in grid.cells]
    errors: list[dict[str, str]] = []
    for i, cell in enumerate(grid.cells):
        records[i] = _record(cell, RUNNING)
        if on_cell is not None:
            on_cell({**records[i], "index": i, "total": len(grid.cells)})
        try:
            records[i] = _run_cell(cell, grid.attack, progress, device)
        except KeyboardInterrupt:
            records[i] = _record(cell, INTERRUPTED)
            write_summary(grid, records, errors)
            raise
        except Exception as e:  # noqa: BLE001 - one cell's failure must not stop the grid
            message = failure_message(e)
            log.info("cell %s failed: %s", cell.name, message)
            log.debug("cell %s failed", cell.name, exc_info=True)
            records[i] = {**_record(cell, FAILED), "error": message}
            errors.append({"cell": cell.name, "error": message})
        write_summary(grid, records, errors)
        if on_cell is not None:
            on_cell({**records[i], "index": i, "total": len(grid.cells)})
    return write_summary(grid, records, errors, plot=True)


def _record(cell: Cell, status: str) -> dict[str, Any]:
    return {"cell": cell.name, "rule": cell.rule, "lr": cell.lr, "seed": cell.seed,
            "run_dir": str(cell.run_dir), "natural": None, "adversarial": None,
            "status": status}


def _run_cell(cell: Cell, attack: AttackSpec, progress: Progress | None,
              device: str | None) -> dict[str, Any]:
    from .workflows import attack_run

    state, metrics, report = cell_state(cell, attack)
    status = REUSED if state == FINISHED else COMPUTED
    if state in (FINISHED, TRAINED):
        check_same_run(cell.run_dir, cell.config)
    cfg = cell.config if device is None else cell.config.replace(device=device)
    if state in (PARTIAL, NEW):
        metrics = train_cell(cfg, resume=state == PARTIAL, progress=progress, name=cell.name,
                             log=log).metrics
    if report is None:
        log.info("cell %s: attacking (%s)", cell.name, attack.describe())
        report = attack_run(
            cell.run_dir, attack.name, [attack.eps], grads=("exact",), steps=attack.steps,
            attack_kwargs=attack.attack_kwargs() or None, max_queries=attack.num_images,
            device=cfg.device, seed=ATTACK_SEED, progress=progress,
            overwrite=_stale_report(cell.run_dir, attack), plot=False)
    adversarial = adversarial_accuracy(report, attack.eps)
    if adversarial is None:
        raise RunFolderError(f"the attack report {report.get('path')} holds no accuracy at "
                             f"ε={attack.eps:g}")
    return {**_record(cell, status), "natural": float(metrics["test_accuracy"]),
            "adversarial": adversarial, "clean_attacked": report.get("clean_accuracy"),
            "num_queries": report.get("num_queries"), "report": report.get("path")}


# -- summary and plot ---------------------------------------------------------------------


def summarize(records: list[dict[str, Any]], grid: TradeoffGrid) -> dict[str, Any]:
    """Per (rule, lr): mean and std over seeds of natural and adversarial accuracy (cells
    without both values are left out); per rule: the mean over lrs of (natural −
    adversarial) of the per-lr means, the statistic seed 000 reports for Fig. 2."""
    points, headline = [], {}
    for rule in grid.rules:
        gaps, used = [], []
        for lr in grid.rule_lrs[rule]:
            done = [r for r in records if r["rule"] == rule and r["lr"] == lr
                    and r["natural"] is not None and r["adversarial"] is not None]
            if not done:
                continue
            nat = np.array([r["natural"] for r in done], dtype=float)
            adv = np.array([r["adversarial"] for r in done], dtype=float)
            point = {"rule": rule, "lr": lr, "seeds": [r["seed"] for r in done],
                     "n": len(done), "complete": len(done) == len(grid.seeds),
                     "natural_mean": float(nat.mean()), "natural_std": float(nat.std()),
                     "adversarial_mean": float(adv.mean()),
                     "adversarial_std": float(adv.std())}
            point["gap_mean"] = point["natural_mean"] - point["adversarial_mean"]
            points.append(point)
            gaps.append(point["gap_mean"])
            used.append(lr)
        complete = len(used) == len(grid.rule_lrs[rule]) and all(
            p["complete"] for p in points if p["rule"] == rule)
        headline[rule] = {"mean_gap": float(np.mean(gaps)) if gaps else None, "lrs": used,
                          "complete": complete}
    return {"points": points, "headline": headline}


def write_summary(
    grid: TradeoffGrid, records: list[dict[str, Any]], errors: list[dict[str, str]],
    *, plot: bool = False,
) -> dict[str, Any]:
    """Write ``out/tradeoff.json`` (atomically) and, with ``plot``, ``out/tradeoff.png``."""
    summary = summarize(records, grid)
    notes = []
    if grid.attack.num_images is not None:
        notes.append(f"adversarial accuracy is measured on a seeded subsample of "
                     f"{grid.attack.num_images} query images, natural accuracy on the whole "
                     f"query split (clean_attacked: the clean accuracy on the subsample)")
    result: dict[str, Any] = {
        "grid": grid.describe(),
        "attack": grid.attack.describe(),
        "statistic": "headline.<rule>.mean_gap: mean over lrs of (natural - adversarial), "
                     "each the mean over seeds (seed 000 Fig. 2); std: population std over "
                     "seeds (numpy, ddof=0); accuracies are fractions in [0, 1]",
        "cells": records,
        "summary": summary["points"],
        "headline": summary["headline"],
        "errors": list(errors),
        "complete": all(r["status"] in (COMPUTED, REUSED) for r in records),
        "plot": None,
        "notes": notes,
    }
    path = grid.out / SUMMARY
    if plot:
        if summary["points"]:
            try:
                tradeoff_plot(grid.out / PLOT, summary["points"], grid)
                result["plot"] = str(grid.out / PLOT)
            except OSError as e:
                notes.append(f"{grid.out / PLOT} not written: {e}")
        else:
            notes.append("no cell finished: no plot")
    atomic_write_json(path, result)
    result["path"] = str(path)
    return result


def tradeoff_plot(path: str | Path, points: list[dict[str, Any]], grid: TradeoffGrid) -> Path:
    """Adversarial (y) against natural (x) accuracy: one curve per rule through its (rule,
    lr) points sorted by natural accuracy, error bars = std over seeds, each point labelled
    with its lr; the diagonal (adversarial = natural) dotted."""
    from .eval.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        lo, hi = 1.0, 0.0
        for i, rule in enumerate(grid.rules):
            pts = sorted((p for p in points if p["rule"] == rule),
                         key=lambda p: p["natural_mean"])
            if not pts:
                continue
            colour = colours[i % len(colours)]
            x = [p["natural_mean"] for p in pts]
            y = [p["adversarial_mean"] for p in pts]
            gap = np.mean([p["gap_mean"] for p in pts])
            ax.errorbar(x, y, xerr=[p["natural_std"] for p in pts],
                        yerr=[p["adversarial_std"] for p in pts], marker="o", markersize=4,
                        linewidth=1.4, capsize=3, color=colour,
                        label=f"{rule} (mean natural − adversarial {gap:.3f})")
            for p in pts:
                ax.annotate(f"{p['lr']:g}", (p["natural_mean"], p["adversarial_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=colour)
            lo, hi = min(lo, *x, *y), max(hi, *x, *y)
        if hi >= lo:
            pad = 0.05 * max(hi - lo, 0.02)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], linestyle=":", color="0.5",
                    linewidth=1.0, label="adversarial = natural")
        seeds = len(grid.seeds)
        ax.set_xlabel(f"natural test accuracy (mean of {seeds} seed{'s' * (seeds > 1)})")
        ax.set_ylabel(f"adversarial accuracy ({grid.attack.describe()})")
        ax.set_title(f"Natural vs adversarial accuracy over the lr grid: {grid.base.backbone} "
                     f"on {grid.base.dataset}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)


__all__ = [
    "AttackSpec", "Cell", "TradeoffGrid", "adversarial_accuracy", "cell_state",
    "find_report", "finished_cells", "grid_status", "load_grid", "parse_grid",
    "run_tradeoff", "summarize", "tradeoff_plot", "write_summary",
]
