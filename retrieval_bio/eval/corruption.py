"""Accuracy under natural corruptions (CIFAR-10-C / CIFAR-100-C style; seed 002 §5.1).

:func:`corruption_sweep` takes a classifier and either a clean dataset (the corruptions are
generated in-process, :mod:`retrieval_bio.datasets.corruptions`) or the official arrays
(:class:`~retrieval_bio.datasets.corruptions.CifarC`), and measures top-1 accuracy in every
(corruption, severity) cell. :func:`retrieval_bio.workflows.corrupt_run` does it for a run
folder and writes ``corruption-<key>.json`` and its heat map ``.png``.

Report schema (lists are indexed like ``severities``; cells not computed yet are ``null``)::

    kind            "corruption"
    task, metric    "classify", "accuracy"
    source          "official" (CIFAR-C arrays read from disk) | "generated" (in-process)
    corruptions     names, in CIFAR-10-C's evaluation order (seed 002's; ep.md §2.4)
    severities      e.g. [1, 2, 3, 4, 5]
    accuracy        {corruption: [top-1 accuracy in [0, 1] at each severity]}
    mean_by_severity  [mean over the corruptions at each severity] (what seed 002's figures
                    plot); null where a cell of that severity is missing
    mean_by_corruption  {corruption: mean over the severities}; null where one is missing
    mean            mean over every cell (= mean of mean_by_severity); null until complete
    clean_accuracy  accuracy on the clean images (null when none were given)
    num_images      images per cell
    seed            seed of the generated noise (and, in a run folder, of the subset)
    complete        whether every cell holds a value; a re-run with the same settings fills
                    in the missing ones (an interrupted sweep continues)
    notes           plain-sentence remarks
    generator       generated only: {"constants", "quantisation", "not_generated"}

A run folder's report adds provenance: ``rule, learner, dataset, backbone, image_size, run,
device, settings, key, weights ({file, epoch, sha256}), path, root, resized_from,
clean_images, time_s`` (see :func:`retrieval_bio.workflows.corrupt_run`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..datasets.corruptions import (
    NOT_GENERATED,
    SEVERITIES,
    GeneratedCorruptions,
    check_severity,
    corruption_order,
)
from ..progress import Progress, ensure

log = logging.getLogger(__name__)

DEFAULT_BATCH = 128
GENERATOR_INFO = {
    "constants": "CIFAR-C's own severity constants: hendrycks/robustness "
                 "ImageNet-C/create_c/make_cifar_c.py",
    "quantisation": "clean image rounded to 8 bits; corrupted image truncated to 8 bits "
                    "(np.uint8(255 y)), as the official arrays were saved",
    "not_generated": dict(NOT_GENERATED),
}


class CorruptionSource(Protocol):
    """Where the cells' images come from: :class:`~retrieval_bio.datasets.corruptions.CifarC`
    (``source = "official"``) or
    :class:`~retrieval_bio.datasets.corruptions.GeneratedCorruptions` (``"generated"``)."""

    source: str
    corruptions: list[str]
    num_images: int

    def dataset(self, name: str, severity: int) -> Dataset: ...


def _as_source(data: Any, seed: int) -> tuple[CorruptionSource, Dataset | None]:
    """``(source, clean dataset or None)`` from what :func:`corruption_sweep` accepts."""
    if hasattr(data, "dataset") and hasattr(data, "corruptions"):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = (torch.as_tensor(v) for v in data)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got "
                             f"{tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        data = TensorDataset(images.float(), labels, torch.arange(len(images)))
    if not isinstance(data, Dataset):
        raise TypeError("data must be a Dataset of (image, one-hot label, index) items, an "
                        "(images, labels) pair, or a CifarC / GeneratedCorruptions source; "
                        f"got {type(data).__name__}")
    return GeneratedCorruptions(data, seed=seed), data


@torch.no_grad()
def dataset_accuracy(
    model: nn.Module, dataset: Dataset, *, batch_size: int = DEFAULT_BATCH,
    device: torch.device | str = "cpu", progress: Progress | None = None,
    **fields: Any,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` over ``(image, label, index)`` items: the
    argmax logit is one of the item's labels (one-hot / multi-hot ``(C,)`` rows, as
    :func:`retrieval_bio.eval.encode.accuracy`) or equals its class id. The model runs in
    eval mode and without autograd; every module's mode is restored after. ``progress`` is
    advanced once per batch (with ``fields``), not started or stopped."""
    from ..attacks.base import eval_mode

    correct = total = 0
    with eval_mode(model):
        for x, y, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = model(x.to(device)).float().cpu()
            pred = logits.argmax(dim=1)
            if y.ndim == 2:
                if y.shape[1] != logits.shape[1]:
                    raise ValueError(f"labels have {y.shape[1]} classes but the model outputs "
                                     f"{logits.shape[1]} logits")
                hit = y[torch.arange(len(pred)), pred] > 0
            else:
                hit = pred == y.long()
            correct += int(hit.sum())
            total += len(pred)
            if progress is not None:
                progress.advance(1, **fields)
    return correct / total if total else float("nan")


def check_severities(severities: Sequence[int]) -> list[int]:
    """Sorted distinct severities in 1..5; ``ValueError`` naming a bad one."""
    out = sorted({check_severity(s) for s in severities})
    if not out:
        raise ValueError("give at least one severity in 1..5")
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Set ``mean_by_severity``, ``mean_by_corruption``, ``mean`` and ``complete`` from the
    ``accuracy`` table (in place; also returned). A mean is ``null`` while one of its cells
    is missing, so a partial sweep never shows a mean over a biased subset."""
    acc, names, sev = report["accuracy"], report["corruptions"], report["severities"]
    report["mean_by_severity"] = [_mean([acc[c][i] for c in names]) for i in range(len(sev))]
    report["mean_by_corruption"] = {c: _mean(acc[c]) for c in names}
    report["complete"] = all(v is not None for c in names for v in acc[c])
    report["mean"] = (_mean([v for c in names for v in acc[c]])
                      if report["complete"] and names else None)
    return report


def corruption_sweep(
    model: nn.Module, data: Any, corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES, *, seed: int = 0,
    batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
    progress: Progress | None = None, previous: dict[str, Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    clean: Dataset | None = None,
) -> dict[str, Any]:
    """Accuracy of a classifier in every (corruption, severity) cell.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``, on ``device`` (any
            learner's model: evaluated with ``torch.no_grad`` in eval mode).
        data: where the corrupted images come from: a clean ``Dataset`` of ``(image (3, H, W)
            in [0, 1], one-hot label (C,), index)`` items, or an ``(images (N, 3, H, W),
            labels (N, C) or (N,))`` pair, corrupted in-process (seeded by ``seed``); or a
            :class:`~retrieval_bio.datasets.corruptions.CifarC` /
            :class:`~retrieval_bio.datasets.corruptions.GeneratedCorruptions` source.
        corruptions: names (default: every one the source has); reported in CIFAR-10-C's
            order.
        severities: subset of 1..5.
        seed: seed of the generated noise (per image; batching does not change it).
        batch_size: evaluation batch size (does not change the result).
        clean: dataset for ``clean_accuracy`` (default: ``data`` itself when it is clean;
            none for a source, unless given).
        previous: an earlier report of the same model and settings: its cells (and clean
            accuracy) are kept, not recomputed (how an interrupted sweep continues).
        on_update: called with the report after the clean accuracy and after every cell,
            e.g. to write it to disk so an interruption loses at most the cell in progress.

    Returns:
        The report dict of the module docstring (no run-folder provenance); it covers the
        union of ``previous``'s cells and the requested ones.

    Raises:
        KeyError: an unknown corruption, or one not generated in-process (with why).
        ValueError: a severity outside 1..5.
    """
    device = torch.device(device)
    progress = ensure(progress)
    source, own_clean = _as_source(data, seed)
    clean = clean if clean is not None else own_clean
    names = list(source.corruptions) if corruptions is None else list(corruptions)
    if not names:
        raise ValueError("give at least one corruption")
    if source.source == "generated":
        from ..datasets.corruptions import check_generated

        for n in names:
            check_generated(n)
    elif unknown := [n for n in names if n not in source.corruptions]:
        raise KeyError(f"corruption(s) {', '.join(unknown)} not in the source; it holds "
                       f"{', '.join(source.corruptions)}")
    sev = check_severities(severities)

    cells: dict[tuple[str, int], float] = {}
    prev_names: list[str] = []
    prev_sev: list[int] = []
    notes: list[str] = []
    clean_acc: float | None = None
    if previous:
        prev_names = list(previous.get("corruptions", []))
        prev_sev = [int(s) for s in previous.get("severities", [])]
        for c in prev_names:
            for i, s in enumerate(prev_sev):
                v = (previous.get("accuracy", {}).get(c) or [None] * (i + 1))[i]
                if v is not None:
                    cells[(c, s)] = float(v)
        clean_acc = previous.get("clean_accuracy")
    all_names = corruption_order(prev_names + names)
    all_sev = sorted(set(prev_sev) | set(sev))
    todo = [(c, s) for c in corruption_order(names) for s in sev if (c, s) not in cells]
    if len(todo) < len(names) * len(sev):
        notes.append("cells computed by an earlier run with the same settings and weights were "
                     "kept, not recomputed (pass overwrite=True / --overwrite to redo them)")
    base: dict[str, Any] = {
        "kind": "corruption", "task": "classify", "metric": "accuracy",
        "source": source.source, "num_images": int(source.num_images), "seed": int(seed),
    }
    if source.source == "generated":
        base["generator"] = GENERATOR_INFO

    def report() -> dict[str, Any]:
        rep = {**base, "corruptions": list(all_names), "severities": list(all_sev),
               "accuracy": {c: [cells.get((c, s)) for s in all_sev] for c in all_names},
               "clean_accuracy": clean_acc, "notes": list(notes)}
        return summarise(rep)

    need_clean = clean is not None and clean_acc is None
    n_batches = -(-int(source.num_images) // batch_size)
    total = (len(todo) + need_clean) * n_batches
    progress.start("corruptions", total)
    try:
        if need_clean:
            assert clean is not None
            clean_acc = dataset_accuracy(model, clean, batch_size=batch_size, device=device,
                                         progress=progress, corruption="clean")
            if on_update is not None:
                on_update(report())
        for c, s in todo:
            t0 = time.perf_counter()
            cells[(c, s)] = dataset_accuracy(model, source.dataset(c, s),
                                             batch_size=batch_size, device=device,
                                             progress=progress, corruption=c, severity=s)
            log.info("corruption %s severity %d: accuracy %.4f (%.1f s)", c, s, cells[(c, s)],
                     time.perf_counter() - t0)
            if on_update is not None:
                on_update(report())
    finally:
        progress.stop()
    return report()


def report_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The report as a table: a row per corruption (accuracy per severity, then its mean),
    a ``mean`` row (per severity, then the overall mean) and a ``clean`` row."""
    sev = report["severities"]
    header = ["corruption"] + [f"sev {s}" for s in sev] + ["mean"]
    rows: list[list[Any]] = [
        [c] + list(report["accuracy"][c]) + [report["mean_by_corruption"][c]]
        for c in report["corruptions"]]
    rows.append(["mean"] + list(report["mean_by_severity"]) + [report["mean"]])
    if report.get("clean_accuracy") is not None:
        rows.append(["clean"] + [None] * len(sev) + [report["clean_accuracy"]])
    return header, rows
