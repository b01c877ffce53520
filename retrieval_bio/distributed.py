"""Data-parallel runs under ``torchrun``: process group, rank checks and the collectives the
trainer, the losses and the encoder use.

``torchrun --nproc-per-node N`` starts N copies of a command and sets ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`init_from_env` reads them and joins the process group (NCCL on CUDA, gloo on CPU).
Without those variables everything here is a no-op for one process, so library code calls
these helpers unconditionally.

Why an explicit gradient all-reduce and not ``DistributedDataParallel``: DDP averages
gradients from autograd hooks, but PEPITA, Equilibrium Propagation and Krotov–Hopfield write
``.grad`` themselves, outside autograd. One bucketed all-reduce of every ``.grad`` after the
learner's step (:func:`average_gradients`) serves every learner and layer rule alike, at the
price of not overlapping communication with the backward pass (measured in
``benchmarks/ddp_overhead.py``).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)

#: all-reduce buckets hold at most this many float32 values (100 MiB), as DDP's default cap
BUCKET_VALUES = 25 * 2**20


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its
    node, and whether :func:`init_from_env` created the process group (and so should
    destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 without it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def env_rank() -> int:
    """``RANK`` set by torchrun (0 without it): which process speaks for the run, also
    before the process group exists and after it is gone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_from_env(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (when ``WORLD_SIZE`` > 1) and return this
    process's :class:`DistInfo` and device: ``cuda`` becomes ``cuda:LOCAL_RANK``.

    Raises:
        RuntimeError: the rendezvous variables are incomplete (not started by torchrun).
    """
    world = env_world_size()
    if dist.is_available() and dist.is_initialized():  # started by the caller (a sweep job)
        rank = dist.get_rank()
        local = _local_rank(rank)
        return DistInfo(rank, dist.get_world_size(), local), _place(device, local)
    if world <= 1:
        return DistInfo(), device
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set: start "
                           f"data-parallel runs with torchrun --nproc-per-node N")
    rank = int(os.environ["RANK"])
    local = _local_rank(rank)
    device = _place(device, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    log.info("rank %d of %d joined the %s process group on %s", rank, world, backend, device)
    return DistInfo(rank, world, local, owns_group=True), device


def _local_rank(rank: int) -> int:
    return int(os.environ.get("LOCAL_RANK", rank))


def _place(device: torch.device, local_rank: int) -> torch.device:
    if device.type != "cuda" or env_world_size() <= 1:
        return device
    if device.index is not None:
        from .config import ConfigError

        raise ConfigError(f"--device {device} under torchrun would put every process on one "
                          f"GPU; give --device cuda (each process takes cuda:LOCAL_RANK), and "
                          f"choose the GPUs with CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def local_device(device: torch.device) -> torch.device:
    """``cuda`` as this rank's own GPU (``cuda:LOCAL_RANK``) under torchrun; else as given."""
    return _place(device, _local_rank(rank()))


def shutdown(info: DistInfo) -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the run (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and shows progress (rank 0, or a lone process)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_state(*modules: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``modules`` from rank ``src`` to all ranks, so all
    start from identical weights (feedback matrices and fitted dictionaries included)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                dist.broadcast(tensor.data, src)


def broadcast_buffers(*modules: nn.Module, src: int = 0) -> None:
    """Copy buffers (BatchNorm running statistics) from rank ``src``: each rank's own batch
    statistics differ, and evaluation must use one model everywhere (as DDP does)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in module.buffers():
                dist.broadcast(tensor.data, src)


def sum_values(values: Sequence[float]) -> list[float]:
    """The floats ``values`` summed over ranks (a step's loss and stop flag), in float64."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average ``.grad`` of ``params`` over ranks in place. Params whose grad is ``None``
    are left alone: which ones those are must be the same on every rank (the trainer checks
    the loss on all ranks first, since autograd skips the backward of a non-finite one)."""
    world = world_size()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1).float() for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive groups of same-device gradients of at most :data:`BUCKET_VALUES`."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for g in grads:
        if out and size + g.numel() <= BUCKET_VALUES and out[-1][0].device == g.device:
            out[-1].append(g)
            size += g.numel()
        else:
            out.append([g])
            size = g.numel()
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a learner's raw update before it normalises)."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the *summed*
    incoming gradients: every rank computes the same loss of the gathered batch, so the sum
    over ranks, after the trainer's averaging, is exactly the one-process gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd's may be shared
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.n
        return grad[start:start + ctx.n]


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch ``(W·n, ...)`` from every rank's ``(n, ...)`` in rank order, with
    gradients flowing back to each rank's own slice; ``x`` itself when not distributed.

    For losses that couple the samples of a batch (HyP²'s pair term): computed on the
    gathered batch they equal the one-process loss of the same global batch.
    """
    if world_size() == 1:
        return x
    if x.requires_grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shard_range(n: int, block: int = 1) -> range:
    """This rank's contiguous share of ``range(n)``, cut at multiples of ``block`` (shares
    differ by at most one block and are in rank order, so concatenating them restores
    ``range(n)``). With ``block`` the batch size, every batch holds the items it holds in
    one process, so the sharded outputs are bit-identical to the one-process ones."""
    world, r = world_size(), rank()
    blocks = -(-n // block)
    return range(min(blocks * r // world * block, n), min(blocks * (r + 1) // world * block, n))


def shard_dataset(dataset, block: int = 1):
    """This rank's contiguous share of ``dataset`` (a ``Subset`` of :func:`shard_range`, cut
    at multiples of ``block``, the batch size); ``dataset`` itself when not distributed."""
    if world_size() == 1:
        return dataset
    from torch.utils.data import Subset

    return Subset(dataset, shard_range(len(dataset), block))


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` when not distributed)."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    """Where small tensors must live for the backend: the current GPU under NCCL."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
