"""Running a sweep (:func:`run_sweep`): the selected cells one after another in this
process, or submitted as a SLURM job array (:mod:`.slurm`), with ``OUT/sweep.json``
rewritten after every cell."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import ConfigError
from ..grids import check_out_writable
from ..progress import Progress
from .cell import run_cell
from .expansion import select_cells
from .model import EXECUTORS, INTERRUPTED, PENDING, SUMMARY, UNSELECTED, SweepGrid
from .slurm import check_slurm, submit_cells
from .summary import cell_record, now, previous_records, write_summary


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
        check_slurm(grid)
    check_out_writable(grid.out)
    chosen = [c.name for c in selected]
    before = previous_records(grid.out / SUMMARY)
    # a cell left out by ``only`` keeps what the last sweep recorded for it
    records = {c.name: cell_record(c, PENDING) if c.name in chosen else
               before.get(c.name, cell_record(c, UNSELECTED)) for c in grid.cells}

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
                records[cell.name] = cell_record(cell, INTERRUPTED, ended=now())
                save()
                raise
            save()
            report(i, records[cell.name])
    else:
        submit_cells(grid, selected, records, device, save, report, wait)
    return save()
