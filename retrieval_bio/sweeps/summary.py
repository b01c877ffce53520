"""The records of a sweep: one per cell (:func:`cell_record`), and ``OUT/sweep.json``
that holds them all (:func:`write_summary`), rewritten after every cell."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..runs import RunFolderError, atomic_write_json, read_json
from .model import DONE, FAILED, SKIPPED, SUMMARY, Cell, SweepGrid, plain


def now() -> str:
    """The local time with its UTC offset, to the second (``2025-05-01T12:00:00+02:00``):
    the ``started`` / ``ended`` / ``updated`` of the records."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def cell_record(cell: Cell, status: str, **extra: Any) -> dict[str, Any]:
    """A cell's record in ``sweep.json`` with ``status``, nothing trained or attacked yet;
    ``extra`` adds or replaces entries (``started``, ``error``, ``job_id`` ...)."""
    return {"cell": cell.name, "run_dir": str(cell.run_dir), "values": plain(cell.values),
            "status": status, "train": None, "attacks": [], "error": None,
            "error_file": None, **extra}


def previous_records(path: Path) -> dict[str, dict[str, Any]]:
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
        "grid": grid.describe(), "executor": executor, "updated": now(), "counts": counts,
        "selected": list(selected) if selected is not None else [r["cell"] for r in records],
        "complete": all(r["status"] in (DONE, SKIPPED) for r in records),
        "failed": [{"cell": r["cell"], "error": r["error"], "error_file": r["error_file"]}
                   for r in records if r["status"] == FAILED],
        "cells": records,
    }
    path = grid.out / SUMMARY
    atomic_write_json(path, result)
    return {**result, "path": str(path)}
