"""The one shared trainer: every task and learning rule trains through :class:`Trainer`.

It owns the loop and nothing task-specific: the model maps images to outputs, the
``objective`` (an ``nn.Module``, possibly with parameters such as HyP² proxies) maps
``(outputs, labels)`` to a scalar loss, ``validate`` returns metrics each epoch and
``select_metric`` (maximised) picks the epoch whose weights the run keeps.

Reproducibility: the order of epoch ``e`` is a permutation drawn from a generator seeded
with ``(seed, e)``, each item's augmentation is drawn from a generator seeded with
``(seed, e, item)`` (so neither loader workers nor ranks change it), and every checkpoint
stores the optimiser and all RNG states taken at the start of the step it resumes from, so
``resume=True`` continues to the same weights as an uninterrupted run on the same device,
whether the stop came at an epoch end or a Ctrl-C.

Data parallel (under ``torchrun``, see :mod:`retrieval_bio.distributed`): every rank walks
the same global order; global batch ``b`` of ``batch_size`` items is cut into equal
contiguous shares, rank ``r`` taking the ``r``-th. After the learner's step the gradients
are averaged over ranks (with the loss and the Ctrl-C flag in the same collective), so all
ranks take identical optimiser steps and a checkpoint of any world size resumes at any
other. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..datasets.errors import DatasetError
from ..learners import Autograd, Learner, StepContext
from ..loading import loader_options
from ..progress import Progress, ensure
from ..runs import BEST, CHECKPOINT, atomic_torch_save, load_checkpoint, update_metrics
from .devices import rng_state, set_rng_state
from .optim import Schedule

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """Training diverged (the loss or the weights grew by orders of magnitude); the message
    names the epoch, the step, the numbers seen and the likely cause."""


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or infinite; the message names the epoch and step."""


#: the divergence check of the loss starts at this global step (the smoothed loss needs a
#: few steps to mean anything)
DIVERGENCE_WARMUP = 10
#: smoothing of the loss average compared against the reference (a lone spike is no trend)
DIVERGENCE_EMA = 0.9


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    # running totals of the current epoch, so a resumed epoch logs the whole epoch's loss
    epoch_loss_sum: float = 0.0
    epoch_seen: int = 0
    epoch_time: float = 0.0
    # divergence check: loss of the first step, smoothed recent loss, start weight norm
    loss_reference: float | None = None
    loss_ema: float | None = None
    weight_norm_start: float | None = None


StepHook = Callable[[nn.Module, torch.optim.Optimizer], None]
EpochHook = Callable[[nn.Module, int], dict[str, Any]]


class Trainer:
    """Training loop with validation, selection, atomic checkpoints and resume.

    The step's mathematics belongs to a :class:`~retrieval_bio.learners.Learner` (default:
    :class:`~retrieval_bio.learners.Autograd`, ``loss.backward()``); the trainer zeroes the
    gradients, calls ``learner.training_step``, checks the loss, steps the optimiser and runs
    the hooks. The learner's own state (e.g. PEPITA's F) is saved with every checkpoint.

    Args:
        model: maps images ``(N, 3, H, W)`` in [0, 1] to task outputs.
        objective: ``objective(outputs, labels) -> scalar loss``; its parameters train too.
        train_set: yields ``(image, multi-hot label, index)``.
        param_groups: optimiser groups (``{"params": [...], "lr": ...}``); they must cover
            every trainable parameter of ``model`` and ``objective``.
        epochs, batch_size, weight_decay, betas: loop settings, and Adam's when no
            ``optimizer`` is given.
        optimizer: an optimiser over ``param_groups`` (see
            :func:`retrieval_bio.train.create_optimizer`); ``None``: Adam.
        schedule: sets every group's rate at each epoch's start from its ``base_lr``
            (:func:`retrieval_bio.train.create_schedule`); ``None``: constant rates.
        learner: turns a batch into gradients; ``None``: autograd (BP and the layer rules).
        seed: seeds the per-epoch data order and each item's augmentation.
        device: a torch device (see :func:`retrieval_bio.train.resolve_device`).
        amp: float16 autocast + gradient scaling, used on CUDA only and only for learners
            whose gradients are loss gradients (``learner.uses_amp``).
        num_workers: loader processes; ``None``: 0 for an in-memory split, else one per
            CPU of this process (:func:`retrieval_bio.loading.default_workers`).
        run_dir: folder for ``checkpoint.pt``, ``best.pt`` and ``metrics.json``
            (``None``: nothing is written; ranks other than 0 only read it, to resume).
        validate: ``validate(model) -> {metric: value}``, run each epoch (model in eval).
        select_metric: key of ``validate``'s output to maximise; the model ends at the best
            epoch's weights. ``None``: the last epoch is kept.
        step_hooks: called after every optimiser step (e.g. brSF redraws its M).
        epoch_hooks: called at each epoch end, return diagnostics to log.
        progress: a :class:`retrieval_bio.progress.Progress` (the CLI passes a rich bar); if
            it has an ``epoch_end(entry, best=bool)`` method, that is called with each
            epoch's history entry.
        divergence_factor: stop with :class:`DivergenceError` when the smoothed loss exceeds
            this multiple of the first step's loss, or the weights' norm this
            multiple of its start; ``0`` turns the check off (NaN/inf always stops).
        history_hooks: called with the state after each epoch's files are written (e.g. to
            draw the training curve).
        chance_level: the ``select_metric`` value of guessing (1/C for accuracy); an epoch
            that ends near it after the weights grew tenfold gets a ``warning`` in its
            history entry (a run that diverged without a NaN).
    """

    def __init__(
        self, model: nn.Module, objective: nn.Module, train_set: Dataset, *,
        param_groups: Sequence[dict[str, Any]], epochs: int, batch_size: int,
        weight_decay: float = 5e-4, betas: tuple[float, float] = (0.9, 0.999), seed: int = 0,
        device: torch.device | str = "cpu", amp: bool = True, num_workers: int | None = None,
        run_dir: str | Path | None = None,
        validate: Callable[[nn.Module], dict[str, float]] | None = None,
        select_metric: str | None = None, step_hooks: Sequence[StepHook] = (),
        epoch_hooks: Sequence[EpochHook] = (), progress: Progress | None = None,
        divergence_factor: float = 100.0,
        history_hooks: Sequence[Callable[[TrainerState], None]] = (),
        chance_level: float | None = None, optimizer: torch.optim.Optimizer | None = None,
        schedule: Schedule | None = None, learner: Learner | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        self.train_set = train_set
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.world = distributed.world_size()
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {self.world} "
                             f"processes (each takes an equal share of every batch)")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._writes = self.run_dir is not None and distributed.is_main()
        self.validate = validate
        self.select_metric = select_metric
        self.step_hooks = list(step_hooks)
        self.epoch_hooks = list(epoch_hooks)
        self.history_hooks = list(history_hooks)
        self.chance_level = chance_level
        self.progress = ensure(progress)
        self._check_groups(param_groups)
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam(
            [dict(g) for g in param_groups], betas=betas, weight_decay=weight_decay
        )
        self.schedule = schedule
        self.learner = (learner if learner is not None else Autograd()).to(self.device)
        self.learner.prepare(self.model, self.objective)
        # identical starting weights on every rank, whatever each drew (as DDP does)
        distributed.broadcast_state(self.model, self.objective, self.learner)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._data: DataLoader | None = None
        self.amp = amp and self.device.type == "cuda" and self.learner.uses_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self._ctx = StepContext(self.device, self.amp, self.scaler, seed=seed)
        self.divergence_factor = float(divergence_factor)
        self.state = TrainerState(weight_norm_start=self._weight_norm())
        self._best_state: dict[str, Any] | None = None
        #: set when :meth:`fit` wrote a checkpoint because the data failed mid-epoch
        self.saved_on_error = False

    # -- public -----------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainerState:
        """Train for the remaining epochs; ``resume`` continues from ``run_dir``'s checkpoint.

        Raises:
            NonFiniteLossError: the loss became NaN/inf (the last checkpoint is kept).
            KeyboardInterrupt: on Ctrl-C, after finishing the current step and writing a
                checkpoint that ``resume=True`` continues exactly (a second Ctrl-C stops at
                once, keeping the last epoch's checkpoint).
        """
        if resume:
            self.load(self._path(CHECKPOINT))
        try:
            self._fit()
        finally:
            self._data = None  # the loader's persistent workers end with it
        return self.state

    def _fit(self) -> None:
        with _GracefulInterrupt() as interrupt:
            while self.state.epoch < self.epochs:
                try:
                    train_stats = self._train_epoch(self.state.epoch, interrupt)
                except DatasetError:
                    # The loader failed before the step it was fetching for: the state is
                    # between two steps, so keep it (a resume continues from here).
                    if self._writes and self.state.step > 0:
                        self.save(self._path(CHECKPOINT))
                        self.saved_on_error = True
                    raise
                if train_stats is None:  # Ctrl-C: stopped cleanly between two steps
                    if self._writes:
                        self.save(self._path(CHECKPOINT))
                        log.warning("interrupted at epoch %d step %d; checkpoint written to %s",
                                    self.state.epoch + 1, self.state.step, self.run_dir)
                    raise KeyboardInterrupt
                rng = rng_state()  # validation may draw (a loader's seed)
                try:
                    self._end_epoch(train_stats)
                except _WORKER_DEATH as err:
                    if not interrupt.requested:
                        raise
                    # The job's SIGTERM killed the validation loader's workers. The state
                    # is that of the epoch's last step, so keep it: a resume validates again.
                    set_rng_state(rng)
                    if self._writes:
                        self.save(self._path(CHECKPOINT))
                        log.warning("interrupted while validating epoch %d (%s); checkpoint "
                                    "written to %s", self.state.epoch + 1, err, self.run_dir)
                    raise KeyboardInterrupt from err
        if self.select_metric is not None and self._best_state is None and self.run_dir:
            best_path = self._path(BEST)
            if best_path.is_file():
                self._best_state = load_checkpoint(best_path)
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state["model"])
            self.objective.load_state_dict(self._best_state["objective"])

    def save(self, path: Path) -> None:
        s = self.state
        atomic_torch_save({
            "model": self.model.state_dict(), "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "learner": self.learner.state_dict(),
            "epoch": s.epoch, "step": s.step, "global_step": s.global_step,
            "history": s.history, "best_epoch": s.best_epoch, "best_value": s.best_value,
            "epoch_totals": [s.epoch_loss_sum, s.epoch_seen, s.epoch_time],
            "divergence": [s.loss_reference, s.loss_ema, s.weight_norm_start],
            "rng": rng_state(),
        }, path)

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.objective.load_state_dict(ckpt["objective"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if "learner" in ckpt:  # checkpoints from before learners had none (autograd)
            self.learner.load_state_dict(ckpt["learner"])
        self.state = TrainerState(
            epoch=ckpt["epoch"], step=ckpt["step"], global_step=ckpt["global_step"],
            history=list(ckpt["history"]), best_epoch=ckpt["best_epoch"],
            best_value=ckpt["best_value"],
        )
        s = self.state
        s.epoch_loss_sum, s.epoch_seen, s.epoch_time = ckpt.get("epoch_totals", (0.0, 0, 0.0))
        s.loss_reference, s.loss_ema, s.weight_norm_start = ckpt.get(
            "divergence", (None, None, self._weight_norm()))
        set_rng_state(ckpt["rng"])

    # -- internals --------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        if self.run_dir is None:
            raise ValueError("this trainer has no run_dir, so it cannot save or resume")
        return self.run_dir / name

    def _check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        covered = {id(p) for g in groups for p in g["params"]}
        trainable = [p for m in (self.model, self.objective) for p in m.parameters()
                     if p.requires_grad]
        missing = [p for p in trainable if id(p) not in covered]
        if missing:
            raise ValueError(f"{len(missing)} trainable parameters are in no parameter group")

    def _steps_per_epoch(self) -> int:
        """Full batches only (a 1-item last batch would break BatchNorm); at least one."""
        return max(len(self.train_set) // self.batch_size, 1)

    def _order(self, epoch: int, start_step: int) -> list[tuple[int, int]]:
        """``(epoch, item)`` keys of this rank's share of the epoch's remaining batches."""
        # A private generator: drawing the order must not consume the global RNG, or a
        # resumed epoch would see other dropout masks than the uninterrupted one.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.train_set)
        order = torch.randperm(n, generator=g)
        steps = self._steps_per_epoch()
        usable = min(steps * self.batch_size, n)  # one short batch when n < batch_size
        batches = order[:usable].view(steps, -1)[start_step:]
        share = batches.shape[1] // self.world
        r = distributed.rank()
        mine = batches[:, r * share:(r + 1) * share].reshape(-1)
        return [(epoch, int(i)) for i in mine]

    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        """One loader per fit, its workers kept across epochs; each epoch sets its order."""
        if self._data is None:
            self._sampler = _Keys()
            items = _SeededItems(self.train_set, self.seed)
            # a private generator: starting an epoch's iteration draws a base seed, which
            # must not come from the global RNG (dropout's)
            self._data = DataLoader(
                items, batch_size=self.batch_size // self.world, sampler=self._sampler,
                generator=torch.Generator().manual_seed(self.seed),
                **loader_options(self.train_set, self.num_workers, self.device,
                                 persistent=True))
        self._sampler.keys = self._order(epoch, start_step)
        return self._data

    def _train_epoch(self, epoch: int, interrupt: _GracefulInterrupt) -> dict[str, float] | None:
        self.model.train()
        self.objective.train()
        s = self.state
        loader = self._loader(epoch, s.step)
        total = self._steps_per_epoch()
        if self.schedule is not None:
            self.schedule.apply(self.optimizer, epoch)
        for m in self.model.modules():  # staged parts (a front end's training stages)
            if callable(getattr(m, "set_epoch", None)):
                m.set_epoch(epoch)
        self.progress.start(f"epoch {epoch + 1}/{self.epochs}", total)
        self.progress.advance(s.step)
        t0 = time.perf_counter() - s.epoch_time
        try:
            for images, labels, _ in _until_stopped(loader, interrupt,
                                                    stop_first=self.world == 1):
                loss, stop = self._train_step(images, labels, interrupt.requested)
                s.epoch_loss_sum += (loss or 0.0) * images.shape[0] * self.world
                s.epoch_seen += images.shape[0] * self.world
                s.step += 1
                s.global_step += 1
                s.epoch_time = time.perf_counter() - t0
                if loss is not None:
                    self._check_divergence(loss)
                # the epoch's running mean: a step's own loss is too noisy to read
                shown = s.epoch_loss_sum / s.epoch_seen if self.learner.has_loss else None
                self.progress.advance(1, loss=shown,
                                      images_per_s=s.epoch_seen / max(s.epoch_time, 1e-9))
                if stop and s.step < total:  # a Ctrl-C on some rank, seen by all at once
                    return None
            if interrupt.requested and s.step < total:  # (or the loader died with the signal)
                return None
        finally:
            self.progress.stop()
        stats = {"loss": s.epoch_loss_sum / max(s.epoch_seen, 1) if self.learner.has_loss
                 else None, "time_s": s.epoch_time,
                 "images_per_s": s.epoch_seen / max(s.epoch_time, 1e-9)}
        if self.schedule is not None:
            stats["lr"] = [g["lr"] for g in self.optimizer.param_groups]
        return stats

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, stop: bool = False
                    ) -> tuple[float | None, bool]:
        """One optimiser step; returns the (rank-averaged) loss and whether any rank asked
        to stop after this step."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        ctx = self._ctx
        ctx.epoch, ctx.global_step = self.state.epoch, self.state.global_step
        value = self.learner.training_step(self.model, self.objective, images, labels, ctx)
        if self.world > 1:
            # the loss first: a rank whose loss is not finite skipped its backward, so its
            # gradients must not meet the others' in the reduction below
            loss_sum, stops = distributed.sum_values((0.0 if value is None else value,
                                                      float(stop)))
            value = None if value is None else loss_sum / self.world
            stop = stops > 0
            if (value is None or math.isfinite(value)) and not self.learner.syncs_gradients:
                distributed.average_gradients(self._params)
        if value is not None and not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value} at epoch {self.state.epoch + 1}, step {self.state.step + 1} "
                f"(global step {self.state.global_step + 1}){self._kept()}. Lower the learning "
                f"rate, or check the data and the rule's feedback scale."
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for hook in self.step_hooks:
            hook(self.model, self.optimizer)
        return value, stop

    def _kept(self) -> str:
        """Where the last good state is, for error messages: only a file that exists."""
        if self.run_dir is None or not self._path(CHECKPOINT).is_file():
            return "; no checkpoint was written before this point"
        return (f"; the last checkpoint (end of epoch {self.state.epoch}) is kept in "
                f"{self._path(CHECKPOINT)}")

    def _weight_norm(self) -> float:
        with torch.no_grad():
            sq = sum(float(p.detach().float().square().sum()) for p in self.model.parameters())
        return math.sqrt(sq)

    def _check_divergence(self, loss: float) -> None:
        """Stop when the smoothed loss has grown ``divergence_factor``-fold over the loss of
        the run's first step (taken before any update, so a blow-up in the first steps
        cannot raise its own reference); checked from step :data:`DIVERGENCE_WARMUP` on."""
        s = self.state
        if self.divergence_factor <= 0:
            return
        if s.loss_reference is None:
            s.loss_reference = abs(loss)
        s.loss_ema = loss if s.loss_ema is None else (
            DIVERGENCE_EMA * s.loss_ema + (1 - DIVERGENCE_EMA) * loss)
        ref = s.loss_reference
        if s.global_step < DIVERGENCE_WARMUP or ref <= 0:
            return
        if s.loss_ema > self.divergence_factor * ref:
            raise DivergenceError(
                f"training diverged at epoch {s.epoch + 1}, step {s.step} (global step "
                f"{s.global_step}): the smoothed loss is {s.loss_ema:.4g}, "
                f"{s.loss_ema / ref:.3g} times the loss of the first step ({ref:.4g})"
                f"{self._kept()}. Likely cause: the learning rate is too high for this model "
                f"and rule (lower lr_backbone / lr_head), or the rule's feedback is too large "
                f"(scale 'none' on a deep net). divergence_factor={self.divergence_factor:g} "
                f"sets this check (0 turns it off)."
            )

    def _check_weights(self) -> None:
        s = self.state
        if self.divergence_factor <= 0 or not s.weight_norm_start:
            return
        ratio = self._weight_norm() / s.weight_norm_start
        if ratio > self.divergence_factor:
            raise DivergenceError(
                f"training diverged by epoch {s.epoch + 1}: the weights' norm grew {ratio:.3g}"
                f"-fold since the start{self._kept()}. Likely cause: the learning rate is too "
                f"high for this model and rule (lower lr_backbone / lr_head). "
                f"divergence_factor={self.divergence_factor:g} sets this check (0: off)."
            )

    def _warn_at_chance(self, entry: dict[str, Any]) -> None:
        value = entry.get(self.select_metric) if self.select_metric else None
        if self.chance_level is None or value is None or value > 1.5 * self.chance_level:
            return
        growth = self.weight_growth()
        if growth > 10:
            entry["warning"] = (
                f"epoch {entry['epoch']}: {self.select_metric} {value:.3f} is at chance level "
                f"({self.chance_level:.3g}) while the weights' norm grew {growth:.3g}-fold since "
                f"the start: the run has likely diverged; lower the learning rate")
            log.warning(entry["warning"])

    def weight_growth(self) -> float:
        """The weights' norm now over their norm when training started (1.0 = unchanged)."""
        start = self.state.weight_norm_start
        return self._weight_norm() / start if start else 1.0

    def _end_epoch(self, train_stats: dict[str, float]) -> None:
        s = self.state
        self._check_weights()
        entry: dict[str, Any] = {"epoch": s.epoch + 1, **train_stats}
        # each rank's BatchNorm saw its own share: evaluate rank 0's statistics everywhere
        distributed.broadcast_buffers(self.model, self.objective)
        if self.validate is not None:
            self.model.eval()
            self.objective.eval()
            with torch.no_grad():
                # rank 0's numbers decide for all: an attacked validation (cuDNN, the sign
                # of a near-zero gradient) could otherwise pick other epochs on other ranks
                entry.update(distributed.broadcast_object(self.validate(self.model)))
        for hook in self.epoch_hooks:
            entry.update(hook(self.model, s.epoch + 1))
        self._warn_at_chance(entry)
        s.history.append(entry)
        s.epoch += 1
        s.step = 0
        s.epoch_loss_sum, s.epoch_seen, s.epoch_time = 0.0, 0, 0.0
        improved = False
        if self.select_metric is not None:
            value = entry.get(self.select_metric)
            if value is None:
                raise KeyError(f"validate() returned no {self.select_metric!r} metric")
            if not self._selectable(s.epoch - 1):
                entry["selectable"] = False
            elif s.best_value is None or value > s.best_value:
                s.best_value, s.best_epoch, improved = float(value), s.epoch, True
                self._best_state = {
                    "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                    "objective": {k: v.detach().clone()
                                  for k, v in self.objective.state_dict().items()},
                }
        log.info("epoch %d: %s", s.epoch, entry)
        epoch_end = getattr(self.progress, "epoch_end", None)
        if epoch_end is not None:
            epoch_end(entry, best=improved, epochs=self.epochs)
        if self._writes:
            if improved:
                atomic_torch_save({**self._best_state, "epoch": s.epoch}, self._path(BEST))
            self.save(self._path(CHECKPOINT))
            update_metrics(self.run_dir, history=s.history, best_epoch=s.best_epoch,
                           select_metric=self.select_metric, best_value=s.best_value)
        for hook in self.history_hooks:
            hook(s)


    def _selectable(self, epoch: int) -> bool:
        """Whether the weights after epoch ``epoch`` (from 0) may become the run's result:
        a staged part says no before its final stage (a front end not yet quantised)."""
        return all(m.is_selectable(epoch) for m in self.model.modules()
                   if callable(getattr(m, "is_selectable", None)))


#: how a DataLoader worker's death shows in the main process: ``RuntimeError`` between
#: batches, ``OSError`` (connection reset) or ``EOFError`` while it hands one over
_WORKER_DEATH = (RuntimeError, OSError, EOFError)


def _until_stopped(loader: DataLoader, interrupt: _GracefulInterrupt, *, stop_first: bool):
    """The loader's batches. With ``stop_first`` (one process) a requested stop ends them
    before the next batch is fetched; under torchrun every rank fetches and runs its step,
    and the ranks agree on the stop in that step's reduction. When a stop was requested and
    the workers died (SLURM and torchrun send SIGTERM to every process of the job), the
    batches end there too, and the trainer stops between two steps as for any interrupt.

    The batch lost with the workers is not needed: the checkpoint records the step, and a
    resumed run draws that batch again."""
    it = iter(loader)
    while True:
        if stop_first and interrupt.requested:
            return
        try:
            batch = next(it)
        except StopIteration:
            return
        except _WORKER_DEATH:
            if interrupt.requested:
                return
            raise
        yield batch


class _Keys:
    """The sampler of the trainer's one loader: the keys of the epoch being run (set before
    each epoch; read in the main process, so persistent workers see every epoch's order)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _SeededItems(Dataset):
    """``dataset[i]`` for key ``(epoch, i)``, its random transforms drawn from a generator
    seeded with ``(seed, epoch, i)``: an item's augmentation then depends neither on which
    worker or rank loads it nor on where a resumed epoch restarts."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        # Transforms draw from the global CPU generator. In the main process (no workers) it
        # also drives dropout, so its state is put back. The generator's own methods, not
        # torch.manual_seed / fork_rng: those cost ~70 µs per item in device checks.
        gen = torch.default_generator
        state = gen.get_state()
        gen.manual_seed(((self.seed * 1_000_003 + epoch) * 2_147_483_647 + i) % 2**63)
        try:
            return self.dataset[i]
        finally:
            gen.set_state(state)


class _GracefulInterrupt:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (sent by SLURM before a time limit or a
    preemption, and by torchrun to stop its workers) into a flag checked between steps, so
    the checkpoint written on interrupt never holds a half-applied optimiser step. A second
    Ctrl-C raises ``KeyboardInterrupt`` at once. Outside the main thread it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            # only a person presses twice; SIGTERM may come twice at once (srun + torchrun)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.warning("%s: stopping after this step (press Ctrl-C again to stop at once)", name)

    def __enter__(self) -> _GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            # None: the previous handler was not set from Python; fall back to the default
            if previous is None:
                previous = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous)
