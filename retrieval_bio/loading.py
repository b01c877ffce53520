"""DataLoader settings shared by training and encoding.

Workers: a split held in memory (``in_memory = True``: digits, CIFAR pickles, the decoded
image cache) is indexed faster than worker processes start, so it gets none; a split that
decodes files gets one worker per CPU this process may use (the machine's CPUs over
torchrun's ``LOCAL_WORLD_SIZE``), at most :data:`MAX_WORKERS`. Pinned memory on CUDA only.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch.utils.data import Dataset

#: more decoding processes than this per GPU rarely helps and costs memory
MAX_WORKERS = 8


def in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset`` (or the dataset a ``Subset`` wraps) is held in memory."""
    while not hasattr(dataset, "in_memory") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return bool(getattr(dataset, "in_memory", False))


def cpus_per_process() -> int:
    """CPUs this process may use: its affinity set over the ranks sharing the node."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        local_world = 1
    return max(cpus // local_world, 1)


def default_workers(dataset: Dataset) -> int:
    """0 for an in-memory split, else one worker per available CPU (at most 8)."""
    return 0 if in_memory(dataset) else min(MAX_WORKERS, cpus_per_process())


def loader_options(dataset: Dataset, num_workers: int | None, device: torch.device,
                   *, persistent: bool = False) -> dict[str, Any]:
    """``DataLoader`` keyword arguments: ``num_workers`` (``None``: :func:`default_workers`),
    ``pin_memory`` on CUDA, and ``persistent_workers`` when asked and there are workers (a
    loader iterated once per epoch keeps its processes instead of forking new ones)."""
    workers = default_workers(dataset) if num_workers is None else int(num_workers)
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        opts["persistent_workers"] = persistent
        opts["prefetch_factor"] = 4
        opts["worker_init_fn"] = ignore_ctrl_c
    return opts


def ignore_ctrl_c(worker_id: int) -> None:
    """Loader workers ignore Ctrl-C, which a terminal sends to every process of the job: the
    main process stops after its step and shuts the workers down itself. (SIGTERM stays
    deadly: it is how their parent ends them; the trainer treats workers that a SIGTERM
    killed during a requested stop as the end of the epoch's data.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
