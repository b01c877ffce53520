"""Sweeps: one grid file, many runs, trained and attacked one after another or on SLURM.

A grid file (``retrieval-bio sweep GRID.yaml``; format in ``docs/sweeps.md``) names a base
run config, lists of values for any :class:`~retrieval_bio.config.RunConfig` keys (backbone
x dataset x rule x seed ...) and optionally attacks to run on every trained cell. Each
combination is a *cell*, trained into ``out/<cell>/`` with the library's own
:func:`~retrieval_bio.train.train_run` and attacked with
:func:`~retrieval_bio.workflows.attack_run`, exactly what ``finetune`` and ``attack`` run.

Cells are independent. A cell whose training finished (:func:`~retrieval_bio.runs.
run_finished`) and whose attack reports are complete is skipped; one with a checkpoint of
unfinished training resumes; one that fails (any exception; Ctrl-C stops the sweep instead)
gets its traceback in ``out/<cell>/error.txt`` and the next cell starts. ``out/sweep.json``
records every cell's status (done / skipped / failed + message, times) and is rewritten
after each one. A per-cell lock (``out/<cell>/.sweep.lock``) keeps two processes (two
sweeps, or a duplicate cluster job) from training the same folder at once.

``executor="slurm"`` submits the cells as a SLURM job array through submitit (optional
dependency: ``pip install 'retrieval-bio[slurm]'``); every job runs :func:`run_cell`, the
same function the local loop runs. A job of several tasks trains its cell data parallel
(torchrun's variables from submitit's job environment; :mod:`retrieval_bio.distributed`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import itertools
import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig, load_yaml, resume_config
from .progress import Progress
from .runs import (
    CHECKPOINT,
    METRICS,
    RunFolderError,
    atomic_write_json,
    atomic_write_text,
    file_digest,
    read_json,
    run_finished,
    run_weights,
    writable_dir,
)
from .tradeoff import _base as tradeoff_base
from .tradeoff import _check_mapping, _check_same_run, _no_duplicates

log = logging.getLogger(__name__)

GRID_KEYS = ("base", "grid", "attacks", "out", "name", "init", "executor", "slurm")
ATTACK_KEYS = ("name", "label", "eps", "grads", "steps", "preset", "num_images",
               "batch_size", "seed", "norm", "weights", "attack_kwargs", "bpda", "eot",
               "eot_reduce", "t_attack")
EXECUTORS = ("local", "slurm")
SUMMARY = "sweep.json"
ERROR_FILE = "error.txt"
LOCK_FILE = ".sweep.lock"
#: grid keys whose values name a cell folder as they are (``resnet18-cifar10-frsf``); other
#: keys are written ``key=value`` (``bits=64``), the seed ``s<seed>``
BARE_KEYS = ("backbone", "dataset", "rule", "task", "stage", "frontend")
#: RunConfig keys whose values are mappings: in a grid, a list of mappings for one of these
#: is a list of values, not of bundles
DICT_KEYS = tuple(f.name for f in fields(RunConfig) if f.name.endswith("_options"))
#: longest folder-name part kept as written; longer ones end in a digest
MAX_PART = 60

#: statuses of a cell in sweep.json
DONE, SKIPPED, FAILED, INTERRUPTED, BUSY, SUBMITTED, PENDING, UNSELECTED = (
    "done", "skipped", "failed", "interrupted", "busy", "submitted", "pending", "unselected")
#: what a training or an attack of one attempt did
TRAINED, RESUMED = "trained", "resumed"
#: states of a cell's folder (``--dry-run``)
FINISHED, ATTACKS_LEFT, PARTIAL, NEW, RUNNING, DAMAGED = (
    "finished", "trained", "partial", "new", "running", "damaged")
#: SLURM submission keys of the grid's ``slurm:`` section -> submitit AutoExecutor parameters
SLURM_KEYS = {
    "cluster": None, "partition": "slurm_partition", "time": "timeout_min",
    "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem_gb",
    "nodes": "nodes", "tasks_per_node": "tasks_per_node",
    "array_parallelism": "slurm_array_parallelism", "account": "slurm_account",
    "qos": "slurm_qos", "constraint": "slurm_constraint", "exclude": "slurm_exclude",
    "setup": "slurm_setup", "additional_parameters": "slurm_additional_parameters",
    "job_name": "name",
}
#: ``slurm.cluster``: SLURM, or submitit's local executors (jobs as local subprocesses, or
#: in this process), which try the submission path on a machine without SLURM
CLUSTERS = ("slurm", "local", "debug")
SLURM_HINT = "pip install 'retrieval-bio[slurm]'"


# -- the grid -----------------------------------------------------------------------------


@dataclass
class SweepAttack:
    """One attack run on every trained cell of its task: the options of
    :func:`~retrieval_bio.workflows.attack_run` (``num_images`` is its ``max_queries``)."""

    name: str
    eps: tuple[float, ...]
    label: str
    grads: tuple[str, ...] = ("exact", "model")
    steps: int | None = None
    preset: str | None = None
    num_images: int | None = None
    batch_size: int = 128
    seed: int = 0
    norm: str = "linf"
    weights: str = "best"
    attack_kwargs: dict[str, Any] = field(default_factory=dict)
    bpda: tuple[str, ...] | None = None
    eot: tuple[int, ...] | None = None
    eot_reduce: str = "normalized"
    t_attack: int | None = None

    @property
    def task(self) -> str:
        from .eval.robustness import attack_task

        return attack_task(self.name)

    def run(self, run_dir: Path, *, device: str, progress: Progress | None,
            overwrite: bool = False) -> dict[str, Any]:
        """Attack the run in ``run_dir`` (the report lands there, as ``attack`` writes it)."""
        from . import workflows  # looked up at call time: tests wrap attack_run

        return workflows.attack_run(
            run_dir, self.name, list(self.eps), grads=self.grads, steps=self.steps,
            preset=self.preset, max_queries=self.num_images, batch_size=self.batch_size,
            device=device, seed=self.seed, attack_kwargs=self.attack_kwargs or None,
            weights=self.weights, overwrite=overwrite, t_attack=self.t_attack,
            progress=progress, norm=self.norm, bpda=self.bpda, eot=self.eot,
            eot_reduce=self.eot_reduce)

    def settings(self) -> dict[str, Any]:
        """The entries of a report's ``settings`` these options produce (a key
        :func:`attack_run` leaves out when it has its default is expected absent)."""
        want = {"attack": self.name, "steps": self.steps, "preset": self.preset,
                "num_images": self.num_images, "seed": self.seed,
                "batch_size": self.batch_size, "attack_kwargs": self.attack_kwargs,
                "weights": self.weights, "t_attack": self.t_attack,
                "norm": None if self.norm == "linf" else self.norm,
                "eot_reduce": None if self.eot_reduce == "normalized" else self.eot_reduce,
                "source": None}
        if self.weights not in ("best", "last"):  # a file: recorded as its resolved path
            del want["weights"]
        return want

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass
class Cell:
    """One point of the grid: its folder name, the run config that trains it, the values
    the grid gives it and the attacks (of its task) run on it."""

    name: str
    config: RunConfig
    values: dict[str, Any]
    attacks: list[SweepAttack] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class SweepGrid:
    """A validated grid (:func:`load_grid`); ``cells`` is :func:`expand` of it."""

    base: RunConfig
    axes: dict[str, list[Any]]
    attacks: list[SweepAttack] = field(default_factory=list)
    out: Path = Path("runs/sweep")
    name: str | None = None  # folder-name template, e.g. "{backbone}-{dataset}-s{seed}"
    init: str | None = None  # init template, e.g. "runs/pretrain/{backbone}-{dataset}"
    executor: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    cells: list[Cell] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.source) if self.source else None,
                "grid": {k: [_plain(v) for v in vs] for k, vs in self.axes.items()},
                "attacks": [a.to_dict() for a in self.attacks], "out": str(self.out),
                "name": self.name, "init": self.init, "executor": self.executor,
                "slurm": self.slurm}


def load_grid(path: str | Path) -> SweepGrid:
    """Read, validate and expand the grid YAML ``path`` (``docs/sweeps.md``).

    Every key, every attack and every cell's :class:`RunConfig` is checked before anything
    runs; the cell errors are reported together.

    Raises:
        ConfigError: naming the file, the key or the cell, and what is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist; give the path of a sweep grid "
                          f"YAML (examples in configs/sweeps/)")
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"grid file {path} is not valid YAML: {e}") from e
    try:
        return parse_grid(data, base_dir=path.parent, default_out=f"runs/sweeps/{path.stem}",
                          source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_grid(
    data: Any, *, base_dir: str | Path = ".", default_out: str = "runs/sweep",
    source: Path | None = None,
) -> SweepGrid:
    """A :class:`SweepGrid` (cells expanded) from the mapping of a grid file. ``base`` paths
    are relative to ``base_dir`` (the grid file's folder); ``out`` and ``init`` are run
    folders, relative to the working directory as everywhere else."""
    if data is None:
        data = {}
    _check_mapping(data, "a sweep grid", "grid file", GRID_KEYS, type(data).__name__)
    base = _base(data.get("base", {}), Path(base_dir))
    axes = _axes(data.get("grid"))
    init = _template_text(data, "init")
    if init is not None and any("init" in _axis_keys(k, vs) for k, vs in axes.items()):
        raise ConfigError("init is given both as a template and in grid; keep one")
    out = data.get("out", default_out)
    if not isinstance(out, str) or not out.strip():
        raise ConfigError(f"out must be a folder path, got {out!r}")
    executor = data.get("executor", "local")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    grid = SweepGrid(base=base, axes=axes, attacks=_attacks(data.get("attacks")),
                     out=Path(out), name=_template_text(data, "name"), init=init,
                     executor=executor, slurm=_slurm_section(data.get("slurm")), source=source)
    grid.cells = expand(grid)
    return grid


def _base(value: Any, base_dir: Path) -> RunConfig:
    """A config file path, a mapping of RunConfig keys, or a mapping with ``config: FILE``
    whose other keys override the file's; built the way ``<stage> --config FILE`` builds a
    run (the stage's defaults, then the file)."""
    if isinstance(value, dict) and "config" in value:
        rest = {k: v for k, v in value.items() if k != "config"}
        cfg = tradeoff_base(value["config"], base_dir)
        try:
            return RunConfig.from_dict({**cfg.to_dict(), **rest})
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
    return tradeoff_base(value, base_dir)


def _is_bundle(axis: str, value: Any) -> bool:
    """A grid value that sets several keys together (``{dataset: coco, root: /data/coco}``)."""
    return isinstance(value, dict) and axis not in DICT_KEYS


def _axis_keys(axis: str, values: list[Any]) -> set[str]:
    if values and _is_bundle(axis, values[0]):
        return set().union(*values)
    return {axis}


def _axes(value: Any) -> dict[str, list[Any]]:
    """The grid's axes: ``key: [values]`` for a RunConfig key, or ``label: [{key: value,
    ...}, ...]`` for keys that vary together. Every key is checked against RunConfig."""
    example = "e.g. grid: {rule: [bp, frsf], seed: [0, 1]}"
    if value is None or value == {}:
        raise ConfigError(f"grid is missing or empty: give lists of values per RunConfig key, "
                          f"{example}")
    if not isinstance(value, dict):
        raise ConfigError(f"grid must map RunConfig keys to lists of values, {example}; got "
                          f"{value!r}")
    known = {f.name for f in fields(RunConfig)}
    valid = ", ".join(sorted(known - {"out"}))
    axes: dict[str, list[Any]] = {}
    set_by: dict[str, str] = {}
    for axis, values in value.items():
        if not isinstance(axis, str):
            raise ConfigError(f"grid: key {axis!r} is not a name")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"grid.{axis} is empty; give at least one value")
        bundles = [_is_bundle(axis, v) for v in values]
        if any(bundles) and not all(bundles):
            raise ConfigError(f"grid.{axis} mixes mappings and single values; give either "
                              f"values of {axis} or mappings of RunConfig keys")
        if not any(bundles) and axis not in known:
            raise ConfigError(f"grid: unknown key {axis!r} (not a RunConfig key); valid keys: "
                              f"{valid}")
        keys = _axis_keys(axis, values)
        unknown = sorted(k for k in keys if k not in known)
        if unknown:
            raise ConfigError(f"grid.{axis}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: {valid}")
        if "out" in keys:
            raise ConfigError(f"grid.{axis} sets out, which the sweep sets: every cell's "
                              f"folder is OUT/<cell>; set out at the top of the grid file")
        for k in sorted(keys):
            if k in set_by:
                raise ConfigError(f"grid: {k} is set by both grid.{set_by[k]} and grid.{axis}")
            set_by[k] = axis
        _no_duplicates(f"grid.{axis}", values)
        axes[axis] = list(values)
    return axes


def _template_text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{key} must be a text template such as "
                          f"'{{backbone}}-{{dataset}}', got {value!r}")
    return value


def _attacks(value: Any) -> list[SweepAttack]:
    """The ``attacks:`` list; each entry is checked as ``retrieval-bio attack`` checks its
    options (:func:`~retrieval_bio.workflows.check_attack_options`)."""
    from .eval.robustness import DEFAULT_BATCH, attack_task
    from .workflows import check_attack_options

    if value is None:
        return []
    value = [value] if isinstance(value, dict) else value
    if not isinstance(value, list):
        raise ConfigError(f"attacks must be a list of attacks, e.g. [{{name: hag, eps: [0.01, "
                          f"0.05]}}]; got {value!r}")
    out: list[SweepAttack] = []
    for i, entry in enumerate(value):
        where = f"attacks[{i}]"
        _check_mapping(entry, where, "attack", ATTACK_KEYS, repr(entry))
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name is missing: give an attack name (hag | sdha | fgsm "
                              f"| pgd | square | apgd | apgd-t | auto)")
        try:
            attack_task(name)
        except ValueError as e:
            raise ConfigError(f"{where}.name: {e}") from None
        get = _Getter(entry, where)
        eps = entry.get("eps")
        if eps is not None:
            eps = eps if isinstance(eps, list) else [eps]
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in eps):
                raise ConfigError(f"{where}.eps must be a number or a list of numbers, got "
                                  f"{entry['eps']!r}")
        grads = get.names("grads", ["exact", "model"])
        steps, num_images = get.integer("steps"), get.integer("num_images")
        batch_size, seed = get.integer("batch_size", DEFAULT_BATCH), get.integer("seed", 0)
        preset, norm = get.text("preset"), get.text("norm", "linf")
        try:
            eps = check_attack_options(name, eps, grads=grads, steps=steps, preset=preset,
                                       max_queries=num_images, batch_size=batch_size,
                                       seed=seed, norm=norm)
        except ConfigError as e:
            text = str(e)
            for flag, key in (("--num-images", "num_images"), ("--batch-size", "batch_size"),
                              ("--grad", "grads"), ("--", "")):
                text = text.replace(flag, key)
            raise ConfigError(f"{where}: {text}") from None
        kwargs = entry.get("attack_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.attack_kwargs must be a mapping, got {kwargs!r}")
        eot = get.ints("eot")
        out.append(SweepAttack(
            name=name, eps=tuple(eps), label=_safe(get.text("label", name)), grads=tuple(grads),
            steps=steps, preset=preset, num_images=num_images, batch_size=batch_size,
            seed=seed, norm=norm, weights=get.text("weights", "best"), attack_kwargs=kwargs,
            bpda=tuple(get.names("bpda")) if "bpda" in entry else None,
            eot=tuple(eot) if eot is not None else None,
            eot_reduce=get.text("eot_reduce", "normalized"), t_attack=get.integer("t_attack")))
    labels = [a.label for a in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"attacks: {twice[0]!r} is listed twice; give the entries distinct "
                          f"labels (label: {twice[0]}-paper, ...)")
    return out


class _Getter:
    """Typed reads of an attack entry's optional keys, each error naming the key."""

    def __init__(self, entry: dict, where: str) -> None:
        self.entry, self.where = entry, where

    def _bad(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key} must be {what}, got {self.entry[key]!r}")

    def integer(self, key: str, default: int | None = None) -> int | None:
        v = self.entry.get(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise self._bad(key, "an integer")
        return v

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self.entry.get(key, default)
        if v is not None and not isinstance(v, str):
            raise self._bad(key, "a name")
        return v

    def names(self, key: str, default: list[str] | None = None) -> list[str]:
        v = self.entry.get(key, default)
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a name or a list of names")
        return list(v)

    def ints(self, key: str) -> list[int] | None:
        v = self.entry.get(key)
        if v is None:
            return None
        v = [v] if isinstance(v, int) else v
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                              for x in v):
            raise self._bad(key, "an integer or a list of integers")
        return list(v)


def _slurm_section(value: Any) -> dict[str, Any]:
    """The ``slurm:`` section, checked without importing submitit (see :data:`SLURM_KEYS`);
    ``time`` and ``mem`` are normalised to minutes and GB."""
    if value is None:
        return {}
    _check_mapping(value, "slurm", "slurm", tuple(SLURM_KEYS), repr(value))
    out = dict(value)
    if out.get("cluster", "slurm") not in CLUSTERS:
        raise ConfigError(f"slurm.cluster must be one of {', '.join(CLUSTERS)}, got "
                          f"{out['cluster']!r}")
    if "time" in out:
        out["time"] = _minutes(out["time"])
    if "mem" in out:
        out["mem"] = _gigabytes(out["mem"])
    for key in ("gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node",
                "array_parallelism"):
        v = out.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"slurm.{key} must be an integer >= 0, got {v!r}")
    setup = out.get("setup")
    if setup is not None and (not isinstance(setup, list)
                              or not all(isinstance(s, str) for s in setup)):
        raise ConfigError(f"slurm.setup must be a list of shell lines, got {setup!r}")
    extra = out.get("additional_parameters")
    if extra is not None and not isinstance(extra, dict):
        raise ConfigError(f"slurm.additional_parameters must be a mapping, got {extra!r}")
    return out


def _minutes(value: Any) -> int:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) or an
    integer of minutes, in whole minutes (rounded up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m or isinstance(value, bool):
        raise ConfigError(f"slurm.time must be minutes or D-HH:MM:SS, got {value!r}")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise ConfigError(f"slurm.time must be positive, got {value!r}")
    return math.ceil(seconds / 60)


def _gigabytes(value: Any) -> float:
    """A memory size (``64``: GB; ``64G``, ``500M``, ``1T``) in GB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", str(value), re.IGNORECASE)
    if not m or isinstance(value, bool):
        raise ConfigError(f"slurm.mem must be a size such as 64G or 500M, got {value!r}")
    scale = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024, "": 1}[m.group(2).upper()]
    return float(m.group(1)) * scale


# -- expansion ----------------------------------------------------------------------------


def expand(grid: SweepGrid) -> list[Cell]:
    """Every cell of ``grid`` (the cartesian product of its axes, the first axis outermost),
    with its folder name and validated run config; touches no file.

    Folder names join the cell's value of every axis, in the grid's order, e.g.
    ``resnet18-cifar10-frsf-s1`` or ``lr_head=0.01``, made filesystem-safe; ``grid.name``
    (a template over RunConfig keys) replaces them. An axis with one value is named too, so
    that adding values to an axis later keeps the folders of the cells already run (fixed
    settings belong in ``base``).

    Raises:
        ConfigError: cells whose config is invalid (all of them named together), two cells
            with one folder name, or an attack that applies to no cell's task.
    """
    base = grid.base.to_dict()
    axes = list(grid.axes.items())
    cells: list[Cell] = []
    errors: list[str] = []
    names: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(vs for _, vs in axes)):
        values: dict[str, Any] = {}
        for (axis, _), v in zip(axes, combo, strict=True):
            values.update(v if _is_bundle(axis, v) else {axis: v})
        merged = {**base, **values}
        try:
            if grid.name is not None:
                name = _safe(_fill("name", grid.name, merged))
            else:
                name = _safe("-".join(_axis_part(a, v) for (a, _), v in zip(axes, combo,
                                                                            strict=True)))
            if grid.init is not None:
                merged["init"] = _fill("init", grid.init, merged)
            merged["out"] = str(grid.out / name)
            cfg = RunConfig.from_dict(merged)
        except ConfigError as e:
            errors.append(f"cell {_safe(_label(values))}: {e}")
            continue
        if name in names:
            raise ConfigError(
                f"cells {_label(names[name])} and {_label(values)} would share the folder "
                f"{grid.out / name}; give a name template that tells them apart, e.g. "
                f"name: '{{backbone}}-{{dataset}}-{{rule}}-s{{seed}}'")
        names[name] = values
        cells.append(Cell(name, cfg, values, [a for a in grid.attacks if a.task == cfg.task]))
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError("; ".join(errors[:5]) + more)
    for attack in grid.attacks:
        if not any(attack in c.attacks for c in cells):
            tasks = sorted({c.config.task for c in cells})
            raise ConfigError(f"attack {attack.label!r} attacks {attack.task} models, but every "
                              f"cell is a {' / '.join(tasks)} run; remove it or add task: "
                              f"{attack.task} cells")
    return cells


def _label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _fill(key: str, template: str, values: dict[str, Any]) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as e:
        raise ConfigError(f"{key}: {{{e.args[0]}}} in {template!r} is not a RunConfig key; "
                          f"use keys such as {{backbone}}, {{dataset}}, {{rule}}, {{seed}}"
                          ) from None
    except ValueError as e:
        raise ConfigError(f"{key}: {template!r} is not a valid template ({e})") from None


def _axis_part(axis: str, value: Any) -> str:
    if _is_bundle(axis, value):
        if axis in value:
            return _part(axis, value[axis])
        return f"{axis}=" + "-".join(_fmt(v) for v in value.values())
    return _part(axis, value)


def _part(key: str, value: Any) -> str:
    if key == "seed":
        return f"s{value}"
    if key in BARE_KEYS:
        return _fmt(value)
    return f"{key}={_fmt(value)}"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip()


def _safe(text: str) -> str:
    """``text`` as one folder name: characters other than letters, digits and ``._+=-``
    become ``_``, no leading dot, long names shortened with a digest (stable)."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "cell"
    safe = re.sub(r"^\.+", "_", safe)
    if len(safe) > 2 * MAX_PART:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        safe = f"{safe[:2 * MAX_PART - 9]}-{digest}"
    return safe


def _plain(value: Any) -> Any:
    """JSON/YAML-friendly copy (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def select_cells(cells: Sequence[Cell], only: str | None) -> list[Cell]:
    """The cells whose name matches one of the comma-separated glob patterns ``only``
    (all of them for ``None``).

    Raises:
        ConfigError: a pattern matches no cell (the message lists some cell names).
    """
    if not only:
        return list(cells)
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c.name, p) for c in cells):
            names = ", ".join(c.name for c in cells[:6]) + (", ..." if len(cells) > 6 else "")
            raise ConfigError(f"--only {p!r} matches no cell; the cells are {names}")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


# -- the state of a cell's folder ---------------------------------------------------------


def find_attack_report(run_dir: str | Path, cfg: RunConfig, attack: SweepAttack
                       ) -> tuple[Path | None, bool]:
    """``(path, stale)``: the report in ``run_dir`` made with ``attack``'s settings from the
    weights the run holds now and holding every requested (gradient source, ε) cell, or
    ``None``; ``stale``: a report of these settings exists but was made from other weights
    (the run was trained again), so it is recomputed rather than refused.

    Reading only: the settings are matched as :func:`~retrieval_bio.workflows.attack_run`
    writes them; if they ever drift apart, the sweep calls ``attack_run`` again, which
    itself reuses the cells a report holds, so nothing is computed twice.
    """
    from .eval.robustness import GRADIENT_FREE, NO_GRAD, missing_cells, parse_variant
    from .models.backbones import has_own_gradient
    from .rules import has_feedback_path

    run_dir = Path(run_dir)
    try:
        digest = _digest(run_weights(run_dir, attack.weights))
    except (RunFolderError, OSError):
        return None, False
    want = attack.settings()
    if attack.name in GRADIENT_FREE:
        expected = [NO_GRAD]
    elif has_feedback_path(cfg.rule) or has_own_gradient(cfg.backbone):
        expected = list(dict.fromkeys(attack.grads))
    else:  # BP-like: the sources coincide and attack_run computes the first only
        expected = list(attack.grads)[:1]
    stale = False
    for path in sorted(run_dir.glob(f"attack-{attack.name}-*.json")):
        try:
            report = read_json(path)
        except RunFolderError:
            continue
        settings = report.get("settings") or {}
        if any(settings.get(k) != v for k, v in want.items()):
            continue
        if (report.get("weights") or {}).get("sha256") != digest:
            stale = True
            continue
        columns = [c for c in report.get("grad") or [] if _column_grad(c, parse_variant)
                   in expected]
        if {_column_grad(c, parse_variant) for c in columns} != set(expected):
            continue
        try:
            if not missing_cells(report, columns, attack.eps):
                return path, False
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    return None, stale


_digests: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    """SHA-256 of a weights file, cached by (path, mtime, size): a dry run over many cells
    and attacks reads each file once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _digests:
        _digests[key] = file_digest(path)
    return _digests[key]


def _column_grad(column: str, parse: Callable[[str], tuple]) -> str | None:
    try:
        return parse(column)[0]
    except ValueError:
        return None


def cell_state(cell: Cell) -> tuple[str, str]:
    """``(state, detail)`` of a cell's folder without changing it: ``running`` (another
    process holds its lock), ``damaged``, ``finished`` (skipped by a run), ``trained``
    (attacks left), ``partial`` (a checkpoint of unfinished training: resumes), ``failed``
    (the last attempt's ``error.txt``; retried) or ``new``."""
    run_dir = cell.run_dir
    if _locked(run_dir):
        return RUNNING, f"another process runs this cell now ({run_dir / LOCK_FILE})"
    error = _first_error(run_dir)
    try:
        finished = run_finished(run_dir)
    except RunFolderError as e:
        return DAMAGED, str(e)
    if finished:
        left = [a.label for a in cell.attacks
                if find_attack_report(run_dir, cell.config, a)[0] is None]
        if not left:
            return FINISHED, "skipped on a run"
        detail = f"attacks to run: {', '.join(left)}"
        return (FAILED, f"{error}; {detail}") if error else (ATTACKS_LEFT, detail)
    if (run_dir / CHECKPOINT).is_file():
        try:
            epochs = len(read_json(run_dir / METRICS).get("history", []))
        except RunFolderError as e:
            return DAMAGED, str(e)
        detail = f"resumes training after epoch {epochs}"
        return (FAILED, f"{error}; {detail}") if error else (PARTIAL, detail)
    if error:
        return FAILED, f"{error}; retried from the start"
    return NEW, "trains from the start"


def _first_error(run_dir: Path) -> str | None:
    """The headline of the last attempt's ``error.txt`` (``None`` when there is none)."""
    try:
        lines = (run_dir / ERROR_FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((line for line in lines if line.strip()), "failed")


def sweep_status(grid: SweepGrid, only: str | None = None) -> list[dict[str, Any]]:
    """Per selected cell ``{cell, run_dir, state, detail}``, writing nothing (what
    ``--dry-run`` lists)."""
    return [{"cell": c.name, "run_dir": str(c.run_dir), "state": s, "detail": d}
            for c in select_cells(grid.cells, only) for s, d in [cell_state(c)]]


# -- one cell -----------------------------------------------------------------------------


class CellBusy(RuntimeError):
    """Another process holds the cell's lock: it is training or attacking that folder."""


@contextlib.contextmanager
def _cell_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.sweep.lock`` (an advisory ``flock``, released by the OS when the
    process dies, so a killed job never leaves a stale lock).

    Raises:
        CellBusy: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CellBusy(f"another process runs this cell now (it holds "
                           f"{run_dir / LOCK_FILE})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _locked(run_dir: Path) -> bool:
    """Whether another process holds the cell's lock (tested without creating anything)."""
    try:
        import fcntl

        with open(run_dir / LOCK_FILE) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except (ImportError, OSError):
        pass
    return False


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _record(cell: Cell, status: str, **extra: Any) -> dict[str, Any]:
    return {"cell": cell.name, "run_dir": str(cell.run_dir), "values": _plain(cell.values),
            "status": status, "train": None, "attacks": [], "error": None,
            "error_file": None, **extra}


class _Alone:
    """One process runs the cell: nothing to coordinate."""

    main = True

    def agree(self, busy: str | None) -> str | None:
        return busy

    def training_done(self, ok: bool) -> None:
        pass


class _Ranks:
    """The ranks of a multi-task job train one cell together (torchrun-style data
    parallelism, :mod:`retrieval_bio.distributed`); rank 0 alone holds the lock, writes
    ``error.txt`` and runs the attacks, after the process group is gone (an attack is one
    process's work)."""

    def __init__(self, info: Any) -> None:
        from . import distributed

        self.info, self.dist = info, distributed
        self.main, self.world = distributed.is_main(), distributed.world_size()

    def agree(self, busy: str | None) -> str | None:
        return self.dist.gather_objects(busy)[0]  # rank 0's verdict on the lock

    def training_done(self, ok: bool) -> None:
        try:
            if ok:  # after a failure another rank may be stuck in a collective: no barrier
                self.dist.barrier()
        except Exception as e:  # noqa: BLE001 - another rank failed; rank 0 reports its own
            log.warning("the ranks did not meet after training: %s", e)
        finally:
            self.dist.shutdown(self.info)


def run_cell(cell: Cell, *, progress: Progress | None = None,
             device: str | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) one cell, then run each attack whose report is not
    complete; what the local loop and every SLURM job run.

    Every failure (any exception but ``KeyboardInterrupt``) is caught: its traceback goes to
    ``run_dir/error.txt``, its message into the returned record, and the cell's other
    attacks still run (a failed training runs none). A finished folder must hold the run the
    cell describes (the grid may have been edited since); otherwise the cell fails.

    Args:
        device: overrides the cell's ``device`` (not part of the run's identity).

    Returns:
        The cell's record: ``status`` (done | skipped | failed | busy), ``train`` (skipped |
        trained | resumed | failed), ``attacks`` (label, status, report), ``error`` (the
        first failure's message), ``error_file``, ``started``, ``ended``, ``time_s``.

    Raises:
        KeyboardInterrupt: Ctrl-C; the training's checkpoint is kept, a re-run resumes it.
    """
    return _run_cell(cell, progress, device, _Alone())


def _run_cell(cell: Cell, progress: Progress | None, device: str | None,
              team: _Alone | _Ranks) -> dict[str, Any]:
    started, t0 = _now(), time.perf_counter()
    record = _record(cell, DONE, started=started)
    if isinstance(team, _Ranks):
        record["ranks"] = team.world
    with contextlib.ExitStack() as lock:
        busy = None
        if team.main:
            try:
                lock.enter_context(_cell_lock(cell.run_dir))
            except CellBusy as e:
                busy = str(e)
            except OSError as e:  # the folder cannot be made: a failure, as any other
                busy = f"failed: {_one_line(e)}"
        busy = team.agree(busy)
        if busy is not None:
            team.training_done(False)
            failed = busy.startswith("failed: ")
            record.update(status=FAILED if failed else BUSY,
                          error=busy.removeprefix("failed: "))
        else:
            _attempt(cell, record, progress, device, team)
    record.update(ended=_now(), time_s=round(time.perf_counter() - t0, 2))
    return record


def _attempt(cell: Cell, record: dict[str, Any], progress: Progress | None,
             device: str | None, team: _Alone | _Ranks) -> None:
    error_file = cell.run_dir / ERROR_FILE
    if team.main:
        error_file.unlink(missing_ok=True)  # this attempt's failures only
    failures: list[str] = []

    def failed(what: str, e: Exception) -> str:
        message = _one_line(e)
        log.info("cell %s: %s failed: %s", cell.name, what, message)
        failures.append(f"{what} failed: {message}\n\n{traceback.format_exc()}")
        return message

    cfg = cell.config if device is None else cell.config.replace(device=device)
    try:
        record["train"] = _train(cell, cfg, progress)
    except Exception as e:  # noqa: BLE001 - one cell's failure must not stop the sweep
        record.update(train=FAILED, error=failed("training", e))
    team.training_done(record["train"] != FAILED)
    if not team.main:
        return
    if record["train"] != FAILED:
        for attack in cell.attacks:
            entry: dict[str, Any] = {"attack": attack.label, "status": None, "report": None}
            try:
                entry.update(_attack(cell, cfg, attack, progress))
            except Exception as e:  # noqa: BLE001 - the next attack still runs
                entry.update(status=FAILED, error=failed(f"attack {attack.label}", e))
                record["error"] = record["error"] or f"attack {attack.label}: {entry['error']}"
            record["attacks"].append(entry)
    if failures:
        # the first line is the headline that --dry-run shows
        atomic_write_text(error_file, "\n".join(failures)
                          + f"\n(cell {cell.name}, attempt ended {_now()})\n")
        record.update(status=FAILED, error_file=str(error_file))
    elif record["train"] == SKIPPED and all(a["status"] == SKIPPED for a in record["attacks"]):
        record["status"] = SKIPPED


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _train(cell: Cell, cfg: RunConfig, progress: Progress | None) -> str:
    from . import train  # looked up at call time: tests wrap train_run

    run_dir = cell.run_dir
    if run_finished(run_dir):
        _check_same_run(cell)
        return SKIPPED
    if (run_dir / CHECKPOINT).is_file():
        log.info("cell %s: resuming its training", cell.name)
        given = cfg.to_dict()
        stage = given.pop("stage")
        train.train_run(resume_config(run_dir, stage, **given), resume=True,
                        progress=progress)
        return RESUMED
    log.info("cell %s: training", cell.name)
    train.train_run(cfg, progress=progress)
    return TRAINED


def _attack(cell: Cell, cfg: RunConfig, attack: SweepAttack, progress: Progress | None
            ) -> dict[str, Any]:
    path, stale = find_attack_report(cell.run_dir, cell.config, attack)
    if path is not None:
        return {"status": SKIPPED, "report": str(path)}
    log.info("cell %s: attack %s", cell.name, attack.label)
    report = attack.run(cell.run_dir, device=cfg.eval_device or cfg.device,
                        progress=progress, overwrite=stale)
    if not report.get("path"):
        raise RunFolderError(f"the {attack.label} report could not be written: "
                             f"{'; '.join(report.get('notes', []))}")
    return {"status": DONE, "report": report["path"]}


class CellJob:
    """What each SLURM job runs: :func:`run_cell` on its cell.

    A job of several tasks (``nodes`` x ``tasks_per_node`` > 1) is one data-parallel run:
    each task gets torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``, from submitit's job environment) and joins the process group
    here, so that it outlives the training; rank 0's record is the job's.

    ``checkpoint`` is submitit's requeue hook (the duck-typed form of
    ``submitit.helpers.Checkpointable``, so this module imports submitit only when
    submitting): on preemption or timeout the job is requeued with the same cell, and the
    new job resumes the training from its last epoch checkpoint.
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = device

    def __call__(self, cell: Cell) -> dict[str, Any]:
        import submitit

        if submitit.JobEnvironment().num_tasks <= 1:
            return run_cell(cell, device=self.device)
        from submitit.helpers import TorchDistributedEnvironment

        from . import distributed
        from .train.devices import resolve_device

        # the toolkit places each rank on cuda:LOCAL_RANK itself
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = cell.config if self.device is None else cell.config.replace(device=self.device)
        info, _ = distributed.init_from_env(resolve_device(cfg.device))
        try:
            return _run_cell(cell, None, self.device, _Ranks(info))
        finally:
            distributed.shutdown(info)

    def checkpoint(self, cell: Cell) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, cell)


# -- the sweep ----------------------------------------------------------------------------


def run_sweep(
    grid: SweepGrid, *, executor: str | None = None, only: str | None = None,
    device: str | None = None, progress: Progress | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None, wait: bool = True,
) -> dict[str, Any]:
    """Run the cells of ``grid`` (those matching ``only``) that are not finished.

    ``local`` (the default, or the grid's ``executor``) runs them one after another in this
    process; ``slurm`` submits them as one job array (cells already finished are not
    submitted) and, with ``wait``, collects each job's record as it ends. ``out/sweep.json``
    is rewritten after every cell.

    Args:
        device: overrides every cell's ``device`` (not part of the run's identity).
        progress: training and attack progress (local cells).
        on_cell: called with a cell's record (plus ``index`` and ``total``) when it starts
            (status ``pending``; local only) and when it ends or is submitted.
        wait: ``slurm``: wait for the jobs (else return once they are submitted).

    Returns:
        The content of ``sweep.json`` (plus ``path``).

    Raises:
        ConfigError: a bad executor, device or ``only``; submitit missing for ``slurm``.
        RunFolderError: ``out`` cannot be written.
        KeyboardInterrupt: Ctrl-C, after sweep.json marks the cell interrupted.
    """
    executor = executor or grid.executor
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got "
                          f"{executor!r}")
    if device is not None:
        grid.base.replace(device=device)  # validates it before anything runs
    selected = select_cells(grid.cells, only)
    if executor == "slurm":
        _check_slurm(grid)
    if not writable_dir(grid.out):
        raise RunFolderError(f"{grid.out} cannot be written (not a folder, or read-only); "
                             f"choose another out in the grid file")
    chosen = [c.name for c in selected]
    before = _previous_records(grid.out / SUMMARY)
    # a cell left out by ``only`` keeps what the last sweep recorded for it
    records = {c.name: _record(c, PENDING) if c.name in chosen else
               before.get(c.name, _record(c, UNSELECTED)) for c in grid.cells}

    def save() -> dict[str, Any]:
        return write_summary(grid, list(records.values()), executor, selected=chosen)

    def report(i: int, rec: dict[str, Any]) -> None:
        if on_cell is not None:
            on_cell({**rec, "index": i, "total": len(selected)})

    if executor == "local":
        for i, cell in enumerate(selected):
            report(i, records[cell.name])
            try:
                records[cell.name] = run_cell(cell, progress=progress, device=device)
            except KeyboardInterrupt:
                records[cell.name] = _record(cell, INTERRUPTED, ended=_now())
                save()
                raise
            save()
            report(i, records[cell.name])
    else:
        _run_slurm(grid, selected, records, device, save, report, wait)
    return save()


def _check_slurm(grid: SweepGrid) -> None:
    """What submitting needs, checked before anything is written."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(f"executor slurm submits through submitit, which is not installed: "
                          f"{SLURM_HINT}") from None
    if "time" not in grid.slurm:  # submitit's default would end every job after 5 minutes
        raise ConfigError("executor slurm needs slurm.time in the grid file: the wall time of "
                          "one cell, e.g. slurm: {time: '24:00:00'}")


def _run_slurm(grid: SweepGrid, selected: list[Cell], records: dict[str, dict[str, Any]],
               device: str | None, save: Callable[[], dict[str, Any]],
               report: Callable[[int, dict[str, Any]], None], wait: bool) -> None:
    """Submit the unfinished cells as one array through submitit; collect with ``wait``."""
    import submitit

    todo = []
    for i, cell in enumerate(selected):
        state, detail = cell_state(cell)
        if state in (FINISHED, RUNNING):  # no queue slot for a job with nothing to do
            records[cell.name] = (_record(cell, SKIPPED, train=SKIPPED, ended=_now())
                                  if state == FINISHED else
                                  _record(cell, BUSY, error=detail, ended=_now()))
            report(i, records[cell.name])
        else:
            todo.append((i, cell))
    if not todo:
        return
    section = dict(grid.slurm)
    cluster = section.pop("cluster", "slurm")
    params = {SLURM_KEYS[k]: v for k, v in section.items()}
    params.setdefault("name", f"sweep-{grid.source.stem if grid.source else grid.out.name}")
    # one flat folder: submitit names every file by job (and array task) id
    executor = submitit.AutoExecutor(folder=grid.out / "submitit", cluster=cluster)
    try:
        executor.update_parameters(**params)
    except (NameError, AssertionError, ValueError, TypeError) as e:
        raise ConfigError(f"slurm: submitit refuses these parameters: {e}") from None
    jobs = executor.map_array(CellJob(device), [cell for _, cell in todo])
    for (i, cell), job in zip(todo, jobs, strict=True):
        records[cell.name] = _record(cell, SUBMITTED, job_id=job.job_id, started=_now(),
                                     log=str(job.paths.stderr))
        report(i, records[cell.name])
    save()
    if not wait:
        return
    for (i, cell), job in zip(todo, jobs, strict=True):
        try:
            rec = job.results()[0]  # several tasks (data parallel): rank 0's record
        except Exception as e:  # noqa: BLE001 - the job itself died (killed, out of memory)
            message = str(e).strip().splitlines()
            rec = _record(cell, FAILED, error=f"job {job.job_id} failed: "
                          f"{message[-1] if message else type(e).__name__} (log: "
                          f"{job.paths.stderr})", ended=_now())
        records[cell.name] = {**rec, "job_id": job.job_id, "log": str(job.paths.stderr)}
        save()
        report(i, records[cell.name])


def _previous_records(path: Path) -> dict[str, dict[str, Any]]:
    """The cell records of an earlier ``sweep.json`` (none when it is missing or damaged:
    it is rewritten anyway)."""
    try:
        cells = read_json(path).get("cells") or []
    except RunFolderError:
        return {}
    return {r["cell"]: r for r in cells if isinstance(r, dict) and "cell" in r
            and "status" in r}


def write_summary(grid: SweepGrid, records: list[dict[str, Any]], executor: str,
                  selected: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``out/sweep.json`` (atomically): the grid, every cell's record (the cells run
    this time are ``selected``), the counts per status; ``complete`` when every cell is done
    or skipped."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    result = {
        "grid": grid.describe(), "executor": executor, "updated": _now(), "counts": counts,
        "selected": list(selected) if selected is not None else [r["cell"] for r in records],
        "complete": all(r["status"] in (DONE, SKIPPED) for r in records),
        "failed": [{"cell": r["cell"], "error": r["error"], "error_file": r["error_file"]}
                   for r in records if r["status"] == FAILED],
        "cells": records,
    }
    path = grid.out / SUMMARY
    atomic_write_json(path, result)
    return {**result, "path": str(path)}


__all__ = [
    "Cell", "CellJob", "SweepAttack", "SweepGrid", "cell_state", "expand",
    "find_attack_report", "load_grid", "parse_grid", "run_cell", "run_sweep", "select_cells",
    "sweep_status", "write_summary",
]
