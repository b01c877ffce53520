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

The package, one job per module (everything public is importable from here):

- :mod:`.model`: :class:`SweepGrid`, :class:`Cell`, :class:`SweepAttack`, the statuses;
- :mod:`.parse`: reading and validating a grid file (:func:`load_grid`, :func:`parse_grid`);
- :mod:`.expansion`: the cells and their folder names (:func:`expand`, :func:`select_cells`);
- :mod:`.state`: a cell folder's state (:func:`cell_state`, :func:`sweep_status`,
  :func:`find_attack_report`);
- :mod:`.lock`: the per-cell lock;
- :mod:`.cell`: running one cell (:func:`run_cell`);
- :mod:`.summary`: the cell records and ``sweep.json`` (:func:`write_summary`);
- :mod:`.slurm`: the ``slurm:`` section, :class:`CellJob` and the submission;
- :mod:`.run`: the sweep itself (:func:`run_sweep`).

What ``sweep`` shares with ``tradeoff`` (reading a grid file, the base config, the check of
a finished folder, training a cell) is in :mod:`retrieval_bio.grids`.
"""

from __future__ import annotations

from .cell import run_cell
from .expansion import BARE_KEYS, MAX_PART, expand, select_cells  # noqa: F401
from .lock import LOCK_FILE, CellBusy  # noqa: F401
from .model import (  # noqa: F401
    ATTACKS_LEFT,
    BUSY,
    DAMAGED,
    DICT_KEYS,
    DONE,
    ERROR_FILE,
    EXECUTORS,
    FAILED,
    FINISHED,
    INTERRUPTED,
    NEW,
    PARTIAL,
    PENDING,
    RESUMED,
    RUNNING,
    SKIPPED,
    SUBMITTED,
    SUMMARY,
    TRAINED,
    UNSELECTED,
    Cell,
    SweepAttack,
    SweepGrid,
)
from .parse import ATTACK_KEYS, GRID_KEYS, load_grid, parse_grid  # noqa: F401
from .run import run_sweep
from .slurm import CLUSTERS, SLURM_HINT, SLURM_KEYS, CellJob  # noqa: F401
from .state import cell_state, find_attack_report, sweep_status
from .summary import write_summary

__all__ = [
    "Cell", "CellJob", "SweepAttack", "SweepGrid", "cell_state", "expand",
    "find_attack_report", "load_grid", "parse_grid", "run_cell", "run_sweep", "select_cells",
    "sweep_status", "write_summary",
]
