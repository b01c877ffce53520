"""Run folders and crash-safe file writes.

A run folder holds ``config.yaml``, ``metrics.json``, ``checkpoint.pt`` (latest, for
``--resume``), ``best.pt`` (weights of the selected epoch) and whatever later stages add
(``codes.npz``, ``attack-*.json``, plots). Every write goes to a temporary file in the same
folder and is renamed over the target, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.yaml"
METRICS = "metrics.json"


class RunFolderError(FileNotFoundError):
    """A run folder or one of its files is missing or unreadable."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file: serialise fully, then rename."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunFolderError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run_dir: str | Path, **entries: Any) -> dict[str, Any]:
    """Merge ``entries`` into ``run_dir/metrics.json`` (atomically) and return the result."""
    path = Path(run_dir) / METRICS
    metrics = read_json(path)
    metrics.update(entries)
    atomic_write_json(path, metrics)
    return metrics


def resolve_weights(init: str | Path) -> Path:
    """``--init`` accepts a run folder (its ``best.pt``, else ``checkpoint.pt``) or a file."""
    p = Path(init)
    if p.is_dir():
        for name in (BEST, CHECKPOINT):
            if (p / name).is_file():
                return p / name
        raise RunFolderError(
            f"run folder {p} holds neither {BEST} nor {CHECKPOINT}; point --init at a finished "
            f"run (retrieval-bio pretrain --out {p}) or at a weights file"
        )
    if not p.is_file():
        raise RunFolderError(
            f"--init {p} does not exist; give a run folder written by 'retrieval-bio pretrain' "
            f"or a state-dict file"
        )
    return p
