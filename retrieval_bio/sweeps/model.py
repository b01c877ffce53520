"""The objects of a sweep and the names it writes: :class:`SweepGrid` (a validated grid
file), its :class:`Cell` s and :class:`SweepAttack` s, and the statuses and states that
``sweep.json`` and ``--dry-run`` report."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..progress import Progress

EXECUTORS = ("local", "slurm")
SUMMARY = "sweep.json"
ERROR_FILE = "error.txt"
#: RunConfig keys whose values are mappings: in a grid, a list of mappings for one of these
#: is a list of values, not of bundles
DICT_KEYS = tuple(f.name for f in fields(RunConfig) if f.name.endswith("_options"))

#: statuses of a cell in sweep.json
DONE, SKIPPED, FAILED, INTERRUPTED, BUSY, SUBMITTED, PENDING, UNSELECTED = (
    "done", "skipped", "failed", "interrupted", "busy", "submitted", "pending", "unselected")
#: what a training or an attack of one attempt did
TRAINED, RESUMED = "trained", "resumed"
#: states of a cell's folder (``--dry-run``)
FINISHED, ATTACKS_LEFT, PARTIAL, NEW, RUNNING, DAMAGED = (
    "finished", "trained", "partial", "new", "running", "damaged")


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
        from ..eval.robustness import attack_task

        return attack_task(self.name)

    def run(self, run_dir: Path, *, device: str, progress: Progress | None,
            overwrite: bool = False) -> dict[str, Any]:
        """Attack the run in ``run_dir`` (the report lands there, as ``attack`` writes it)."""
        from .. import workflows  # looked up at call time: tests wrap attack_run

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
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}


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
                "grid": {k: [plain(v) for v in vs] for k, vs in self.axes.items()},
                "attacks": [a.to_dict() for a in self.attacks], "out": str(self.out),
                "name": self.name, "init": self.init, "executor": self.executor,
                "slurm": self.slurm}


def is_bundle(axis: str, value: Any) -> bool:
    """A grid value that sets several keys together (``{dataset: coco, root: /data/coco}``)."""
    return isinstance(value, dict) and axis not in DICT_KEYS


def plain(value: Any) -> Any:
    """JSON/YAML-friendly copy (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value
