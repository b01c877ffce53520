"""Run a model over a dataset: continuous outputs, labels and ids as NumPy arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..loading import loader_options
from ..progress import Progress, ensure


@torch.no_grad()
def encode(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
    device: torch.device | str = "cpu", num_workers: int | None = None,
    progress: Progress | None = None, description: str = "encoding", amp: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs for every item of ``dataset``, in dataset order.

    Under data parallelism (:mod:`retrieval_bio.distributed`) each rank encodes a contiguous
    share of whole batches and every rank receives all items, gathered in dataset order
    (bit-identical to one process: each batch holds the same items).

    Args:
        num_workers: loader processes (``None``: :func:`retrieval_bio.loading.default_workers`).
        amp: on CUDA, float16 autocast and channels_last inputs and weights (the model's 4-D
            weights are converted in place; their values are unchanged). Ignored elsewhere.

    Returns:
        ``outputs`` float32 ``(N, D)`` (logits, or the continuous hash output h whose sign
        is the code), ``labels`` float32 ``(N, C)`` multi-hot, ``ids`` int64 ``(N,)``.
    """
    device = torch.device(device)
    fast = amp and device.type == "cuda"
    was_training = model.training
    model.eval()
    if fast:
        model.to(memory_format=torch.channels_last)
    progress = ensure(progress)
    loader = _share_loader(dataset, batch_size, num_workers, device)
    outs, labels, ids = [], [], []
    progress.start(description, len(loader))
    try:
        for x, y, i in loader:
            x = x.to(device, non_blocking=True)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            # autocast only when on: older torch refuses even a disabled one on MPS
            with (torch.autocast("cuda", dtype=torch.float16) if fast else
                  contextlib.nullcontext()):
                outs.append(model(x).float().cpu())
            labels.append(y)
            ids.append(torch.as_tensor(i))
            progress.advance(1)
    finally:
        progress.stop()
        model.train(was_training)
    return _gathered(outs, labels, ids)  # type: ignore[return-value]


def encode_attacked(
    model: nn.Module, attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dataset: Dataset, *, batch_size: int = 256, device: torch.device | str = "cpu",
    num_workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs for the adversarial images ``attack(x, y)`` of every item of
    ``dataset``, in dataset order (the model in eval mode; the attack computes its own
    gradients). ``x`` is ``(B, C, H, W)`` in [0, 1], ``y`` the ``(B, C)`` labels.

    Sharded over ranks as :func:`encode` is. Each batch holds the items it holds in one
    process, and the toolkit's attacks reseed at every call, so the result is bit-identical
    to one process's.

    Returns:
        ``outputs`` float32 ``(N, D)`` and ``labels`` float32 ``(N, C)``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = _share_loader(dataset, batch_size, num_workers, device)
    outs, labels, ids = [], [], []
    try:
        for x, y, i in loader:
            adv = attack(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            with torch.no_grad():
                outs.append(model(adv).float().cpu())
            labels.append(y)
            ids.append(torch.as_tensor(i))
    finally:
        model.train(was_training)
    return _gathered(outs, labels, ids)[:2]  # type: ignore[return-value]


def _share_loader(dataset: Dataset, batch_size: int, num_workers: int | None,
                  device: torch.device) -> DataLoader:
    """Batches of this rank's share of ``dataset``, in order (all of it in one process)."""
    return DataLoader(distributed.shard_dataset(dataset, batch_size), batch_size=batch_size,
                      shuffle=False, **loader_options(dataset, num_workers, device))


def _gathered(outs: list[torch.Tensor], labels: list[torch.Tensor], ids: list[torch.Tensor]
              ) -> tuple[np.ndarray, ...]:
    """``(outputs, labels, ids)`` of this rank's batches, then, under data parallelism, of
    every rank's share in rank order (each rank receives all items)."""
    if not ids:  # this rank's share is empty (fewer items than ranks)
        out = (np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32),
               np.zeros(0, np.int64))
    else:
        out = (torch.cat(outs).numpy(), torch.cat(labels).float().numpy(),
               torch.cat(ids).long().numpy())
    if distributed.world_size() == 1:
        return out
    shares = [s for s in distributed.gather_objects(out) if len(s[2])]  # rank order
    return tuple(np.concatenate([s[j] for s in shares]) for j in range(3))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]: argmax logit is one of the item's labels (multi-hot)."""
    pred = logits.argmax(axis=1)
    return float(labels[np.arange(len(pred)), pred].astype(bool).mean())
