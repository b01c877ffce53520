"""Run a model over a dataset: continuous outputs, labels and ids as NumPy arrays."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..progress import Progress, ensure


@torch.no_grad()
def encode(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
    device: torch.device | str = "cpu", num_workers: int = 0,
    progress: Progress | None = None, description: str = "encoding",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs for every item of ``dataset``, in dataset order.

    Returns:
        ``outputs`` float32 ``(N, D)`` (logits, or the continuous hash output h whose sign
        is the code), ``labels`` float32 ``(N, C)`` multi-hot, ``ids`` int64 ``(N,)``.
    """
    was_training = model.training
    model.eval()
    progress = ensure(progress)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    outs, labels, ids = [], [], []
    progress.start(description, len(loader))
    try:
        for x, y, i in loader:
            outs.append(model(x.to(device)).float().cpu())
            labels.append(y)
            ids.append(torch.as_tensor(i))
            progress.advance(1)
    finally:
        progress.stop()
        model.train(was_training)
    return (torch.cat(outs).numpy(), torch.cat(labels).float().numpy(),
            torch.cat(ids).long().numpy())


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]: argmax logit is one of the item's labels (multi-hot)."""
    pred = logits.argmax(axis=1)
    return float(labels[np.arange(len(pred)), pred].astype(bool).mean())
