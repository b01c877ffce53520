"""The state of a cell's folder, read without changing it: whether an attack's report is
complete (:func:`find_attack_report`), what a run would do with the cell
(:func:`cell_state`) and the rows ``--dry-run`` lists (:func:`sweep_status`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..grids import attack_reports
from ..runs import (
    CHECKPOINT,
    METRICS,
    RunFolderError,
    file_digest,
    read_json,
    run_finished,
    run_weights,
)
from .expansion import select_cells
from .lock import LOCK_FILE, is_locked
from .model import (
    ATTACKS_LEFT,
    DAMAGED,
    ERROR_FILE,
    FAILED,
    FINISHED,
    NEW,
    PARTIAL,
    RUNNING,
    Cell,
    SweepAttack,
    SweepGrid,
)


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
    from ..eval.robustness import GRADIENT_FREE, NO_GRAD, missing_cells, parse_variant
    from ..models.backbones import has_own_gradient
    from ..rules import has_feedback_path

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
    for path, report in attack_reports(run_dir, attack.name, want):
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
    if is_locked(run_dir):
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
