"""One cell, start to end (:func:`run_cell`): take its lock, train it (or resume it, or
skip it when finished), run each attack whose report is not complete, and record every
failure in ``OUT/<cell>/error.txt`` instead of raising it. What the local loop and every
SLURM job run."""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from typing import Any

from ..config import RunConfig
from ..grids import check_same_run, failure_message, train_cell
from ..progress import Progress
from ..runs import CHECKPOINT, RunFolderError, atomic_write_text, run_finished
from .lock import CellBusy, cell_lock
from .model import (
    BUSY,
    DONE,
    ERROR_FILE,
    FAILED,
    RESUMED,
    SKIPPED,
    TRAINED,
    Cell,
    SweepAttack,
)
from .state import find_attack_report
from .summary import cell_record, now

log = logging.getLogger(__package__)


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
        from .. import distributed

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


def run_cell_data_parallel(cell: Cell, info: Any, *, device: str | None = None
                           ) -> dict[str, Any]:
    """:func:`run_cell` in one rank of a data-parallel job, the process group joined
    (``info``: :func:`~retrieval_bio.distributed.init_from_env`'s). The ranks train the cell
    together; rank 0 alone holds the lock, writes ``error.txt`` and runs the attacks, after
    the process group is shut down. The record has ``ranks`` (the world size); rank 0's is
    the job's."""
    return _run_cell(cell, None, device, _Ranks(info))


def _run_cell(cell: Cell, progress: Progress | None, device: str | None,
              team: _Alone | _Ranks) -> dict[str, Any]:
    started, t0 = now(), time.perf_counter()
    record = cell_record(cell, DONE, started=started)
    if isinstance(team, _Ranks):
        record["ranks"] = team.world
    with contextlib.ExitStack() as lock:
        busy = None
        if team.main:
            try:
                lock.enter_context(cell_lock(cell.run_dir))
            except CellBusy as e:
                busy = str(e)
            except OSError as e:  # the folder cannot be made: a failure, as any other
                busy = f"failed: {failure_message(e)}"
        busy = team.agree(busy)
        if busy is not None:
            team.training_done(False)
            failed = busy.startswith("failed: ")
            record.update(status=FAILED if failed else BUSY,
                          error=busy.removeprefix("failed: "))
        else:
            _attempt(cell, record, progress, device, team)
    record.update(ended=now(), time_s=round(time.perf_counter() - t0, 2))
    return record


def _attempt(cell: Cell, record: dict[str, Any], progress: Progress | None,
             device: str | None, team: _Alone | _Ranks) -> None:
    error_file = cell.run_dir / ERROR_FILE
    if team.main:
        error_file.unlink(missing_ok=True)  # this attempt's failures only
    failures: list[str] = []

    def failed(what: str, e: Exception) -> str:
        message = failure_message(e)
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
                          + f"\n(cell {cell.name}, attempt ended {now()})\n")
        record.update(status=FAILED, error_file=str(error_file))
    elif record["train"] == SKIPPED and all(a["status"] == SKIPPED for a in record["attacks"]):
        record["status"] = SKIPPED


def _train(cell: Cell, cfg: RunConfig, progress: Progress | None) -> str:
    run_dir = cell.run_dir
    if run_finished(run_dir):
        check_same_run(run_dir, cell.config)
        return SKIPPED
    resume = (run_dir / CHECKPOINT).is_file()
    train_cell(cfg, resume=resume, progress=progress, name=cell.name, log=log)
    return RESUMED if resume else TRAINED


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
