"""Optimisers and epoch-level learning-rate schedules, each picked by name from a registry.

``create_optimizer("adam" | "sgd", groups, ...)`` builds the optimiser over parameter groups
that carry their own ``"lr"`` (extra keys such as ``"name"`` are kept). ``create_schedule``
returns a :class:`Schedule`: a *stateless* function of the epoch index (counted from 0), so a
resumed run sets exactly the learning rate of an uninterrupted one by calling
``schedule.apply(optimizer, epoch)`` at the start of every epoch. The rate each group started
from is kept in the group as ``"base_lr"``, which travels inside ``optimizer.state_dict()``.

Schedules (``lr(base, e)`` at epoch index ``e``; ``T`` is ``t_max``, the run's ``epochs`` when
unset):

- ``none``: ``base``.
- ``multistep`` (PEPITA, seed 000: ×0.1 at epochs 60 and 90):
  ``base · gamma^(number of milestones m with m ≤ e)``; milestone ``m`` means "from epoch index
  ``m`` on", so with milestones (60, 90) the 61st epoch (index 60) already runs at ``base·0.1``.
  Identical to ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch.
- ``cosine`` (Loshchilov & Hutter 2017, SGDR; as Equilibrium Propagation's CIFAR-10 runs use
  it, Laborieux et al. 2021): ``lr_min + (base − lr_min)·(1 + cos(π·min(e, T)/T))/2``; the
  values of ``CosineAnnealingLR(T_max=T, eta_min=lr_min)`` for ``e ≤ T``, then held at
  ``lr_min``.
- ``linear`` (Krotov & Hopfield 2019, ``ε_t = ε0·(1 − t/T)`` with ``lr_min = 0``):
  ``base + (lr_min − base)·min(e, T)/T``, held at ``lr_min`` after ``T``.

``lr_min`` is an absolute learning rate, the same floor for every group.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..registry import Registry

#: name -> ``fn(groups, *, lr, weight_decay, betas, momentum, nesterov) -> Optimizer``
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
#: name -> ``fn(*, epochs, milestones, gamma, t_max, lr_min) -> Schedule``
SCHEDULES: Registry[Callable[..., Schedule]] = Registry("schedule")


# -- optimisers -------------------------------------------------------------------------------
def create_optimizer(
    name: str, param_groups: Sequence[dict], *, lr: float | None = None,
    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9, nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Build registered optimiser ``name`` (``"adam"``, ``"sgd"``) over ``param_groups``.

    Args:
        name: a registered optimiser (``OPTIMIZERS.names()``).
        param_groups: ``{"params": [...], "lr": ..., ...}`` dicts; each group's own ``"lr"``
            wins over ``lr``; extra keys (``"name"``) are kept. The dicts are copied.
        lr: learning rate for groups without their own ``"lr"`` (``None``: every group must
            carry one).
        weight_decay: L2 coefficient added to the gradient (``g + wd·w``), both optimisers.
        betas: Adam's moment decay rates, each in [0, 1); ignored by SGD.
        momentum: SGD's momentum μ in [0, 1) (``v ← μv + g; w ← w − lr·v``); ignored by Adam.
        nesterov: SGD's Nesterov momentum (``w ← w − lr·(g + μv)``); needs ``momentum > 0``.
    """
    groups = [dict(g) for g in param_groups]
    if not groups:
        raise ValueError("param_groups is empty: pass at least one {'params': [...]} group")
    for i, g in enumerate(groups):
        if "params" not in g:
            raise ValueError(f"parameter group {i} ({g.get('name', 'unnamed')}) has no "
                             f"'params' key")
        group_lr = g.get("lr", lr)
        if group_lr is None:
            raise ValueError(f"parameter group {i} ({g.get('name', 'unnamed')}) has no 'lr' "
                             f"and no default lr was given: set the group's 'lr' or pass lr=")
        _check_lr(group_lr, f"lr of parameter group {i} ({g.get('name', 'unnamed')})")
    if lr is not None:
        _check_lr(lr, "lr")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return OPTIMIZERS.get(name)(groups, lr=lr, weight_decay=float(weight_decay),
                                betas=tuple(betas), momentum=momentum, nesterov=nesterov)


def _check_lr(value: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


def _with_default_lr(groups: list[dict], lr: float | None) -> list[dict]:
    if lr is not None:
        for g in groups:
            g.setdefault("lr", float(lr))
    return groups


@OPTIMIZERS.register("adam", help="Adam (Kingma & Ba 2015) with L2 weight decay")
def create_adam(
    groups: list[dict], *, lr: float | None = None, weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999), **_: object,
) -> torch.optim.Adam:
    """``torch.optim.Adam``; ``momentum`` and ``nesterov`` are accepted and ignored."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {tuple(betas)!r}")
    return torch.optim.Adam(_with_default_lr(groups, lr), betas=(betas[0], betas[1]),
                            weight_decay=weight_decay)


@OPTIMIZERS.register("sgd", help="SGD with (Nesterov) momentum and L2 weight decay")
def create_sgd(
    groups: list[dict], *, lr: float | None = None, weight_decay: float = 0.0,
    momentum: float = 0.9, nesterov: bool = False, **_: object,
) -> torch.optim.SGD:
    """``torch.optim.SGD`` with ``dampening=0``: ``g ← ∇ + wd·w; v ← μv + g;
    w ← w − lr·v`` (Nesterov: ``w ← w − lr·(g + μv)``); ``betas`` is accepted and ignored."""
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0 (got momentum=0): set momentum "
                         "(e.g. 0.9) or nesterov=False")
    groups = _with_default_lr(groups, lr)
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, dampening=0,
                           nesterov=bool(nesterov), weight_decay=weight_decay)


# -- schedules --------------------------------------------------------------------------------
class Schedule:
    """An epoch-level learning-rate schedule: ``lr(base_lr, epoch)``, epoch counted from 0.

    Subclasses define :meth:`lr` as a pure function of the epoch, so resuming needs no state.
    """

    name = "none"

    def lr(self, base_lr: float, epoch: int) -> float:
        """The learning rate at epoch index ``epoch`` (0 = first epoch) for a group whose
        rate without schedule is ``base_lr``."""
        _check_epoch(epoch)
        return float(base_lr)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Set every group's ``"lr"`` to ``lr(group["base_lr"], epoch)``; on the first call a
        group's current ``"lr"`` is stored as its ``"base_lr"`` (kept by ``state_dict()``)."""
        for group in optimizer.param_groups:
            base = group.setdefault("base_lr", group["lr"])
            group["lr"] = self.lr(base, epoch)

    def describe(self) -> dict[str, Any]:
        """Name and settings, for the run's metrics."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class MultiStepSchedule(Schedule):
    """``base · gamma^(#milestones ≤ epoch)``, i.e. ``MultiStepLR`` stepped once per epoch."""

    name = "multistep"

    def __init__(self, milestones: Sequence[int], gamma: float = 0.1) -> None:
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)

    def lr(self, base_lr: float, epoch: int) -> float:
        _check_epoch(epoch)
        return float(base_lr) * self.gamma ** bisect_right(self.milestones, epoch)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "milestones": list(self.milestones), "gamma": self.gamma}


class _DecaySchedule(Schedule):
    """A decay from ``base`` to ``lr_min`` over ``t_max`` epochs, then flat."""

    def __init__(self, t_max: int, lr_min: float = 0.0) -> None:
        self.t_max = int(t_max)
        self.lr_min = float(lr_min)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "t_max": self.t_max, "lr_min": self.lr_min}


class CosineSchedule(_DecaySchedule):
    """Cosine annealing from ``base`` to ``lr_min`` over ``t_max`` epochs, then flat."""

    name = "cosine"

    def lr(self, base_lr: float, epoch: int) -> float:
        _check_epoch(epoch)
        e = min(epoch, self.t_max)
        return self.lr_min + (float(base_lr) - self.lr_min) * (
            1 + math.cos(math.pi * e / self.t_max)) / 2


class LinearSchedule(_DecaySchedule):
    """Linear decay from ``base`` at epoch 0 to ``lr_min`` at epoch ``t_max``, then flat."""

    name = "linear"

    def lr(self, base_lr: float, epoch: int) -> float:
        _check_epoch(epoch)
        return float(base_lr) + (self.lr_min - float(base_lr)) * min(epoch, self.t_max) / self.t_max


def create_schedule(
    name: str, *, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1,
    t_max: int | None = None, lr_min: float = 0.0,
) -> Schedule:
    """Build registered schedule ``name`` (``"none"``, ``"multistep"``, ``"cosine"``,
    ``"linear"``); each checks only the options it uses.

    Args:
        name: a registered schedule (``SCHEDULES.names()``).
        epochs: the run's number of epochs (the default ``t_max``).
        milestones: ``multistep``: epoch indices (from 0), strictly increasing, ≥ 1; the rate
            is multiplied by ``gamma`` from each of them on.
        gamma: ``multistep``: the factor, > 0.
        t_max: ``cosine``/``linear``: epochs to reach ``lr_min`` (≥ 1); ``None``: ``epochs``.
        lr_min: ``cosine``/``linear``: the absolute final learning rate, ≥ 0.
    """
    return SCHEDULES.get(name)(epochs=epochs, milestones=milestones, gamma=gamma, t_max=t_max,
                               lr_min=lr_min)


def _check_epoch(epoch: int) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an integer index >= 0 (0 = first epoch), got {epoch!r}")


def _resolve_t_max(t_max: int | None, epochs: int) -> int:
    value = epochs if t_max is None else t_max
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        source = f"t_max={t_max!r}" if t_max is not None else f"t_max unset, epochs={epochs!r}"
        raise ValueError(f"t_max must be an integer >= 1 (epochs to reach lr_min), got {source}")
    return value


def _check_lr_min(lr_min: float) -> float:
    if not (isinstance(lr_min, (int, float)) and math.isfinite(lr_min) and lr_min >= 0):
        raise ValueError(f"lr_min must be a finite number >= 0 (an absolute learning rate), "
                         f"got {lr_min!r}")
    return float(lr_min)


@SCHEDULES.register("none", help="constant learning rate")
def create_constant(**_: object) -> Schedule:
    """Constant learning rate; every option is ignored."""
    return Schedule()


@SCHEDULES.register("multistep", help="lr × gamma from each milestone epoch on (PEPITA)")
def create_multistep(
    *, milestones: Sequence[int] = (), gamma: float = 0.1, **_: object
) -> MultiStepSchedule:
    """``MultiStepLR`` stepped once per epoch."""
    ms = list(milestones)
    if not ms:
        raise ValueError("milestones is empty: the multistep schedule needs epoch indices, "
                         "e.g. milestones: [60, 90]")
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms):
        raise ValueError(f"milestones must be positive integers (epoch indices from 0), "
                         f"got {ms!r}")
    if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
        raise ValueError(f"milestones must be strictly increasing, got {ms!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0 (e.g. 0.1), got {gamma!r}")
    return MultiStepSchedule(ms, gamma)


@SCHEDULES.register("cosine", help="cosine annealing to lr_min over t_max epochs (EP)")
def create_cosine(
    *, epochs: int, t_max: int | None = None, lr_min: float = 0.0, **_: object
) -> CosineSchedule:
    """``CosineAnnealingLR(T_max=t_max, eta_min=lr_min)`` up to ``t_max``, then flat."""
    return CosineSchedule(_resolve_t_max(t_max, epochs), _check_lr_min(lr_min))


@SCHEDULES.register("linear", help="linear decay to lr_min over t_max epochs (Krotov-Hopfield)")
def create_linear(
    *, epochs: int, t_max: int | None = None, lr_min: float = 0.0, **_: object
) -> LinearSchedule:
    """``base + (lr_min − base)·min(e, t_max)/t_max``."""
    return LinearSchedule(_resolve_t_max(t_max, epochs), _check_lr_min(lr_min))
