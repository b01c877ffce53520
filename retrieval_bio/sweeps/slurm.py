"""The SLURM executor: the grid's ``slurm:`` section, the job every cell runs in
(:class:`CellJob`) and the submission of the unfinished cells as one job array through
submitit (optional: ``pip install 'retrieval-bio[slurm]'``, imported only when
submitting)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from ..config import ConfigError
from ..grids import check_mapping
from .cell import run_cell, run_cell_data_parallel
from .model import BUSY, FAILED, FINISHED, RUNNING, SKIPPED, SUBMITTED, Cell, SweepGrid
from .state import cell_state
from .summary import cell_record, now

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


def parse_slurm_section(value: Any) -> dict[str, Any]:
    """The ``slurm:`` section, checked without importing submitit (see :data:`SLURM_KEYS`);
    ``time`` and ``mem`` are normalised to minutes and GB."""
    if value is None:
        return {}
    check_mapping(value, "slurm", "slurm", tuple(SLURM_KEYS), repr(value))
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

        from .. import distributed
        from ..train.devices import resolve_device

        # the toolkit places each rank on cuda:LOCAL_RANK itself
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = cell.config if self.device is None else cell.config.replace(device=self.device)
        info, _ = distributed.init_from_env(resolve_device(cfg.device))
        try:
            return run_cell_data_parallel(cell, info, device=self.device)
        finally:
            distributed.shutdown(info)

    def checkpoint(self, cell: Cell) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, cell)


def check_slurm(grid: SweepGrid) -> None:
    """What submitting needs, checked before anything is written."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(f"executor slurm submits through submitit, which is not installed: "
                          f"{SLURM_HINT}") from None
    if "time" not in grid.slurm:  # submitit's default would end every job after 5 minutes
        raise ConfigError("executor slurm needs slurm.time in the grid file: the wall time of "
                          "one cell, e.g. slurm: {time: '24:00:00'}")


def submit_cells(grid: SweepGrid, selected: list[Cell], records: dict[str, dict[str, Any]],
                 device: str | None, save: Callable[[], dict[str, Any]],
                 report: Callable[[int, dict[str, Any]], None], wait: bool) -> None:
    """Submit the unfinished cells of ``selected`` as one array through submitit and, with
    ``wait``, collect each job's record as it ends (a finished cell, or one another process
    runs, is recorded without a job). ``records`` is updated in place; ``save`` writes
    ``sweep.json``, ``report`` tells :func:`~retrieval_bio.sweeps.run_sweep`'s ``on_cell``.
    """
    import submitit

    todo = []
    for i, cell in enumerate(selected):
        state, detail = cell_state(cell)
        if state in (FINISHED, RUNNING):  # no queue slot for a job with nothing to do
            records[cell.name] = (cell_record(cell, SKIPPED, train=SKIPPED, ended=now())
                                  if state == FINISHED else
                                  cell_record(cell, BUSY, error=detail, ended=now()))
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
        records[cell.name] = cell_record(cell, SUBMITTED, job_id=job.job_id, started=now(),
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
            rec = cell_record(cell, FAILED, error=f"job {job.job_id} failed: "
                              f"{message[-1] if message else type(e).__name__} (log: "
                              f"{job.paths.stderr})", ended=now())
        records[cell.name] = {**rec, "job_id": job.job_id, "log": str(job.paths.stderr)}
        save()
        report(i, records[cell.name])
