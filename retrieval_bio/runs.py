"""Run folders and crash-safe file writes.

A run folder holds ``config.yaml``, ``metrics.json``, ``checkpoint.pt`` (latest, for
``--resume``), ``best.pt`` (weights of the selected epoch), ``training_curve.png`` and
whatever later stages add (``codes.npz``, ``database.index``, ``attack-*.json``, plots).
Every write goes to a temporary file in the same folder and is renamed over the target, so
a crash mid-write leaves the previous file intact; the final file gets the permissions an
ordinary ``open()`` would give it under the user's umask.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.yaml"
METRICS = "metrics.json"

#: ``--weights`` of ``evaluate`` / ``attack``: the selected epoch or the last checkpoint.
WEIGHTS_CHOICES = {"best": BEST, "last": CHECKPOINT}


class RunFolderError(FileNotFoundError):
    """A run folder or one of its files is missing, damaged or unwritable; the message names
    the file and the fix."""


_umask_lock = threading.Lock()


def _file_mode() -> int:
    """0o666 less the process umask: the mode ``open(path, "w")`` would create files with.

    ``mkstemp`` creates 0600 files, which would make every run file private to its owner
    whatever the user's umask says. The umask can only be read by setting it, hence the lock.
    """
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (atomic on POSIX).

    Raises:
        OSError: the folder cannot be created or written (e.g. ``PermissionError``); the
            previous file, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
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


def writable_dir(path: str | Path) -> bool:
    """Whether files can be created in folder ``path`` (tried, not guessed from mode bits:
    root ignores them, and network file systems may lie)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def fallback_dir(run_dir: str | Path) -> Path:
    """Where results go when a run folder cannot be written: a per-run folder under the
    system temp dir (the same one every time, so a continued attack sweep finds its cells,
    and ``compare`` finds the reports)."""
    run_dir = Path(run_dir).resolve()
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "retrieval-bio" / f"{run_dir.name}-{digest}"


def output_dir(run_dir: str | Path, out_dir: str | Path | None, notes: list[str]) -> Path:
    """``out_dir`` if given, else ``run_dir``; when that cannot be written, the run's
    :func:`fallback_dir`, with a note appended to ``notes`` saying so.

    Raises:
        RunFolderError: neither can be written.
    """
    target = Path(out_dir) if out_dir is not None else Path(run_dir)
    if writable_dir(target):
        return target
    if out_dir is not None:  # the user's own choice: say so rather than go elsewhere
        raise RunFolderError(f"--report-dir {target} cannot be written (not a folder, or "
                             f"read-only); choose another")
    fallback = fallback_dir(run_dir)
    if not writable_dir(fallback):
        raise RunFolderError(f"neither {target} nor {fallback} can be written; pass "
                             f"--report-dir DIR with a writable folder")
    notes.append(f"{target} cannot be written (read-only?): results are written to "
                 f"{fallback} instead (choose another place with --report-dir)")
    return fallback


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunFolderError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is damaged or "
            f"not a retrieval-bio checkpoint") from e


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file does not exist.

    Raises:
        RunFolderError: the file exists but is not a JSON object (named, with line/column).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFolderError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); repair "
            f"it, or move it aside and re-run the command that writes it") from e
    except (OSError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def update_metrics(
    run_dir: str | Path, *, drop: Any = (), **entries: Any
) -> dict[str, Any]:
    """Merge ``entries`` into ``run_dir/metrics.json`` (atomically) and return the result;
    ``drop`` (keys, or a predicate on a key) removes entries first, so that numbers of an
    earlier evaluation are not left beside newer ones.

    A damaged ``metrics.json`` is never overwritten (that would lose its history): the
    :class:`RunFolderError` of :func:`read_json` propagates.
    """
    path = Path(run_dir) / METRICS
    metrics = read_json(path)
    gone = drop if callable(drop) else set(drop).__contains__
    metrics = {k: v for k, v in metrics.items() if not gone(k)}
    metrics.update(entries)
    atomic_write_json(path, metrics)
    return metrics


#: the test metric ``metrics.json`` holds once a run of each task has finished training
TEST_METRICS = {"classify": "test_accuracy", "hash": "map@k"}


def run_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished training: ``best.pt`` and a ``metrics.json``
    with the test metric of its task (``test_accuracy`` | ``map@k``), or, for an
    unsupervised stage (whose head is untrained, so nothing is tested), ``next_stage``.

    A checkpoint alone is an interrupted run, not a finished one: ``--resume`` continues it.

    Raises:
        RunFolderError: ``metrics.json`` exists but is damaged (named by :func:`read_json`).
    """
    run_dir = Path(run_dir)
    if not (run_dir / BEST).is_file():
        return False
    metrics = read_json(run_dir / METRICS)
    if metrics.get("next_stage"):
        return True
    task = metrics.get("task")
    keys = [TEST_METRICS[task]] if task in TEST_METRICS else list(TEST_METRICS.values())
    return any(metrics.get(k) is not None for k in keys)


def weights_info(path: str | Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Provenance of a weights file for reports: its name, the epoch it holds and the
    SHA-256 of its bytes (so a report can be tied to the exact weights it used)."""
    epoch = checkpoint.get("epoch")
    return {"file": Path(path).name, "epoch": int(epoch) if epoch is not None else None,
            "sha256": file_digest(path)}


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (hex): ties a report to the exact weights it used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def run_weights(run_dir: str | Path, which: str = "best") -> Path:
    """The weights file of a finished run: ``best`` (the selected epoch, ``best.pt``),
    ``last`` (``checkpoint.pt``) or a path to a checkpoint file.

    Raises:
        RunFolderError: the file is missing; for ``best`` the message says how to use the
            last checkpoint instead.
    """
    run_dir = Path(run_dir)
    if which not in WEIGHTS_CHOICES:
        p = Path(which)
        if not p.is_file():
            raise RunFolderError(
                f"weights file {p} does not exist; --weights takes best, last or a file")
        return p
    path = run_dir / WEIGHTS_CHOICES[which]
    if path.is_file():
        return path
    if which == "best":
        last = run_dir / CHECKPOINT
        hint = (f"; the last checkpoint {last} exists: pass --weights last to evaluate it "
                f"(epoch {_epoch_of(last)}), or finish training with --resume"
                if last.is_file() else
                "; no checkpoint exists either: train the run first")
        raise RunFolderError(
            f"{run_dir} has no {BEST} (the weights of the selected epoch): training did not "
            f"complete an epoch, or the file was removed{hint}")
    raise RunFolderError(f"{run_dir} has no {CHECKPOINT}; use --weights best")


def _epoch_of(path: Path) -> int | str:
    try:
        return int(load_checkpoint(path).get("epoch", "?"))
    except (RunFolderError, TypeError, ValueError):
        return "?"


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
