"""A whole training run from one :class:`~retrieval_bio.config.RunConfig`.

``train_run(cfg)`` loads the dataset, builds the model (backbone + task head), loads the
``--init`` weights, converts every Linear/Conv2d to the configured learning rule, trains
through the shared :class:`~retrieval_bio.train.Trainer`, then evaluates the selected epoch
and writes the run folder. ``pretrain`` and ``finetune`` are this function with
different stage defaults.
"""

from __future__ import annotations

import io
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import datasets, distributed, learners, rules
from ..config import DYNAMICS, ConfigError, RunConfig
from ..datasets import DatasetError, DatasetSplits
from ..eval import map_at_k
from ..eval.encode import accuracy, encode, encode_attacked
from ..eval.report import is_evaluation_key
from ..index import HammingIndex, sign_codes
from ..losses import LOSSES
from ..models import BackboneOptionError, TaskModel, backbone_options, create_model
from ..progress import Progress
from ..runs import (
    BEST,
    CHECKPOINT,
    CONFIG,
    RunFolderError,
    atomic_torch_save,
    atomic_write_bytes,
    load_checkpoint,
    resolve_weights,
    run_weights,
    update_metrics,
    weights_info,
)
from .devices import resolve_device, seed_everything
from .optim import Schedule, create_optimizer, create_schedule
from .trainer import StepHook, Trainer, TrainerState

log = logging.getLogger(__name__)

INDEX = "database.index"
CURVE = "training_curve.png"


@dataclass
class RunResult:
    """What a finished run produced; everything is also in ``run_dir``."""

    run_dir: Path
    config: RunConfig
    model: TaskModel
    splits: DatasetSplits
    metrics: dict[str, Any]


def load_splits(
    cfg: RunConfig, *, augment: bool | None = None, skip_bad: bool | None = None
) -> DatasetSplits:
    """The run's dataset splits; ``augment=False`` gives the same splits with evaluation
    transforms (for encoding the train split as a retrieval database). ``skip_bad``
    (default: the config's) skips and counts unreadable items (``info["skipped"]``)."""
    aug = cfg.augment if augment is None else augment
    options = dict(cfg.dataset_options)
    options["skip_bad"] = bool(options.get("skip_bad") or
                               (cfg.skip_bad if skip_bad is None else skip_bad))
    return datasets.load(cfg.dataset, cfg.root, protocol=cfg.protocol, seed=cfg.seed,
                         image_size=cfg.image_size, augment=aug, cache_dir=cfg.data_cache,
                         **options)


def skipped_items(splits: DatasetSplits) -> int:
    """How many unreadable items (images, list lines) the loader skipped."""
    return int(splits.info.get("skipped", 0) or 0)


def build_model(cfg: RunConfig, splits: DatasetSplits, *, load_weights: bool = True
                ) -> TaskModel:
    """Backbone + new head, ``--init`` weights loaded, made trainable under ``cfg.rule``
    (layers converted for a layer rule; checked for a learner such as PEPITA).

    ``load_weights=False`` skips ``weights``/``init`` (a resumed run takes every weight from
    its checkpoint, so the pretrain folder it started from may have moved)."""
    model = task_model(cfg, splits.num_classes, weights=cfg.weights if load_weights else None)
    if cfg.init and load_weights:
        load_init(model, cfg.init)
    if cfg.freeze_backbone:
        model.backbone.freeze()
    return learners.prepare_model(model, cfg.rule, scale=cfg.scale, seed=cfg.seed)


def task_model(cfg: RunConfig, num_classes: int, weights: str | None = None) -> TaskModel:
    """The run's backbone (with ``cfg.model_options``) and task head, before any rule.

    Raises:
        ConfigError: a ``model_options`` key the backbone does not take, or a bad value.
    """
    dynamics = {k: getattr(cfg, k) for k in DYNAMICS if getattr(cfg, k) is not None}
    if dynamics:
        takes = backbone_options(cfg.backbone)
        foreign = [k for k in dynamics if k not in takes]
        if foreign:
            raise ConfigError(
                f"{', '.join(foreign)}: dynamics settings of energy-based backbones (ep-small, "
                f"ep-cifar10, ep-cifar100); backbone {cfg.backbone!r} has no relaxation. Drop "
                f"them or use an ep-* backbone")
    if cfg.frontend != "none" and not learners.is_layer_rule(cfg.rule):
        raise ConfigError(f"frontend {cfg.frontend!r} trains with backprop and the layer "
                          f"rules (bp, fa, usf, frsf, brsf); rule {cfg.rule!r} cannot train "
                          f"it. Drop the front end or use a layer rule")
    try:
        model = create_model(cfg.backbone, cfg.task, num_classes=num_classes, bits=cfg.bits,
                             weights=weights, image_size=cfg.image_size,
                             frontend=cfg.frontend, frontend_options=cfg.frontend_options,
                             **{**cfg.model_options, **dynamics})
    except BackboneOptionError as e:
        raise ConfigError(f"model_options: {e}") from e
    except ValueError as e:  # a bad value of an option, e.g. an image too small for the net
        if str(e).startswith("front end"):  # create_frontend names itself
            raise ConfigError(f"frontend_options: {e}") from e
        raise ConfigError(f"backbone {cfg.backbone!r}: {e}") from e
    if model.frontend is not None and hasattr(model.frontend, "check_epochs"):
        try:
            model.frontend.check_epochs(cfg.epochs)
        except ValueError as e:
            raise ConfigError(f"frontend {cfg.frontend!r}: {e}") from e
    return model


def load_init(model: TaskModel, init: str | Path) -> None:
    """Load backbone weights from a run folder or checkpoint; the task head stays new.

    The head is re-initialised on purpose: a fine-tune appends a new task layer (SPEC §3).
    """
    path = resolve_weights(init)
    state = load_checkpoint(path)
    state = state.get("model", state)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise RunFolderError(f"{path} holds no backbone weights (no 'backbone.*' keys)")
    # Feedback buffers (M, R) of a converted source model are not carried over: the new
    # run draws its own from its seed.
    own = model.backbone.state_dict()
    backbone = {k: v for k, v in backbone.items() if k in own or not _is_feedback_buffer(k)}
    try:
        missing, unexpected = model.backbone.load_state_dict(backbone, strict=False)
    except RuntimeError as e:  # same keys, other shapes: other backbone options
        reason = str(e).splitlines()[-1].strip().rstrip(".")
        raise RunFolderError(
            f"{path} does not fit backbone {model.backbone.name!r} as configured: {reason}. "
            f"Were the weights trained with other --model-opt values (or image size)? "
            f"Without --model-opt, finetune --init RUN takes RUN's own") from e
    missing = [k for k in missing if not _is_feedback_buffer(k)]
    if missing or unexpected:
        raise RunFolderError(
            f"{path} does not fit backbone {model.backbone.name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; was it written for another --backbone?"
        )


def _is_feedback_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in rules.FEEDBACK_BUFFERS


def build_objective(cfg: RunConfig, splits: DatasetSplits) -> nn.Module:
    """The run's loss: ``cfg.loss``, or for ``auto`` HyP² (hash) / cross-entropy (classify)."""
    name = cfg.loss
    if name == "auto":
        name = "hyp2" if cfg.task == "hash" else "cross-entropy"
    if (name == "hyp2") != (cfg.task == "hash"):
        raise ConfigError(f"loss {name!r} does not fit task {cfg.task!r}: hashing trains with "
                          f"hyp2, classification with cross-entropy or mse-softmax")
    kwargs: dict[str, Any] = {"num_classes": splits.num_classes, "bits": cfg.bits}
    if name == "hyp2":
        kwargs.update(proxy_lr_mult=cfg.proxy_lr_mult, seed=cfg.seed)
    try:
        return LOSSES.get(name)(**kwargs)
    except ValueError as e:  # e.g. no HyP² threshold for this (classes, bits) pair
        raise ConfigError(f"--bits {cfg.bits} with {splits.num_classes} classes: {e}") from e


def param_groups(cfg: RunConfig, model: TaskModel, objective: nn.Module) -> list[dict]:
    """Backbone (and a front end) at ``lr_backbone``, the new head at ``lr_head``, loss
    parameters as the loss asks (HyP² proxies: head rate x ``proxy_lr_mult``)."""
    if cfg.layer_lrs:
        layers = parameter_layers(model.backbone)
        if len(layers) != len(cfg.layer_lrs):
            raise ConfigError(
                f"layer_lrs has {len(cfg.layer_lrs)} rates but backbone {cfg.backbone!r} has "
                f"{len(layers)} layers with parameters ({', '.join(n for n, _ in layers)}); "
                f"give one rate per layer, in that order")
        backbone = [{"params": list(m.parameters()), "lr": lr, "name": f"backbone.{n}"}
                    for (n, m), lr in zip(layers, cfg.layer_lrs, strict=True)]
    else:
        backbone = [{"params": list(model.backbone.parameters()), "lr": cfg.lr_backbone,
                     "name": "backbone"}]
    if model.frontend is not None:  # trained with the backbone, at its rate
        params = list(model.frontend.parameters())
        if params:
            backbone.insert(0, {"params": params, "lr": cfg.lr_backbone, "name": "frontend"})
    groups = [
        *backbone,
        {"params": list(model.head.parameters()), "lr": cfg.lr_head, "name": "head"},
        *objective.param_groups(cfg.lr_head),
    ]
    # frozen weights (freeze_backbone) belong to no group; a group left empty is dropped
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    return [g for g in groups if g["params"]]


def parameter_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``module`` that hold parameters of their own, in registration order
    (an EP net's convs, an MLP's linears, a CNN's convs and BatchNorms): the layers that
    ``layer_lrs`` gives one rate each."""
    return [(n, m) for n, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False))]


def make_validate(cfg: RunConfig, splits: DatasetSplits, device: torch.device, *,
                  amp: bool = False):
    """Per-epoch validation: accuracy (classify) or mAP@k of validation queries against
    the train split's codes (hash; the train split stands in for the database so that
    validation stays cheap on large databases). ``amp``: float16 and channels_last
    encoding on CUDA (validation only picks the epoch; the test metrics are float32).

    With ``cfg.val_attack`` the validation images are also attacked (exact gradients, the
    ``adv_*`` settings, a fixed seed) and scored: ``val_adv_accuracy`` / ``val_adv_map``;
    ``select: adversarial`` keeps the epoch that maximises it (seed 000 Table 2)."""
    bs = max(cfg.batch_size, 128)
    adversarial = cfg.val_attack != "none"

    def attacked(model: nn.Module, dataset) -> tuple[np.ndarray, np.ndarray]:
        attack = learners.build_attack(
            model, cfg.val_attack, eps=cfg.adv_eps, steps=cfg.adv_steps, alpha=cfg.adv_alpha,
            random_start=cfg.adv_random_start, seed=cfg.seed)
        return encode_attacked(model, attack, dataset, batch_size=bs, device=device)

    def validate_classify(model: nn.Module) -> dict[str, float]:
        logits, labels, _ = encode(model, splits.validation, batch_size=bs, device=device,
                                   amp=amp)
        out = {"val_accuracy": accuracy(logits, labels)}
        if adversarial:
            adv_logits, adv_labels = attacked(model, splits.validation)
            out["val_adv_accuracy"] = accuracy(adv_logits, adv_labels)
        return out

    def validate_hash(model: nn.Module) -> dict[str, float]:
        q, ql, _ = encode(model, splits.validation, batch_size=bs, device=device, amp=amp)
        d, dl, _ = encode(model, splits.train, batch_size=bs, device=device, amp=amp)
        k = retrieval_k(cfg, splits)
        db = sign_codes(d)
        out = {"val_map": float(map_at_k(sign_codes(q), db, ql, dl, k))}
        if adversarial:
            adv_q, adv_l = attacked(model, splits.validation)
            out["val_adv_map"] = float(map_at_k(sign_codes(adv_q), db, adv_l, dl, k))
        return out

    metric = "map" if cfg.task == "hash" else "accuracy"
    select = f"val_adv_{metric}" if cfg.select == "adversarial" else f"val_{metric}"
    return (validate_hash if cfg.task == "hash" else validate_classify), select


def build_learner(cfg: RunConfig) -> learners.Learner:
    """The run's learner: ``cfg.rule``'s, wrapped in adversarial training when
    ``cfg.adv_train`` names an attack."""
    adv = None
    if cfg.adv_train != "none":
        adv = {"attack": cfg.adv_train, "eps": cfg.adv_eps, "steps": cfg.adv_steps,
               "alpha": cfg.adv_alpha, "random_start": cfg.adv_random_start,
               "mix": cfg.adv_mix}
    return learners.create_learner(cfg.rule, seed=cfg.seed, options=cfg.learner_options,
                                   adv=adv)


def build_optimizer(cfg: RunConfig, groups: list[dict]) -> tuple[torch.optim.Optimizer,
                                                                   Schedule | None]:
    """The run's optimiser over ``groups`` and its epoch schedule (``None``: constant)."""
    try:
        optimizer = create_optimizer(cfg.optimizer, groups, weight_decay=cfg.weight_decay,
                                     betas=cfg.betas, momentum=cfg.momentum,
                                     nesterov=cfg.nesterov)
        schedule = None if cfg.schedule == "none" else create_schedule(
            cfg.schedule, epochs=cfg.epochs, milestones=cfg.milestones, gamma=cfg.gamma,
            t_max=cfg.t_max, lr_min=cfg.lr_min)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return optimizer, schedule


def retrieval_k(cfg: RunConfig, splits: DatasetSplits) -> int:
    return splits.default_k if cfg.k is None else cfg.k


def train_run(
    cfg: RunConfig, *, resume: bool = False, progress: Progress | None = None,
    step_hooks: Sequence[StepHook] = (),
) -> RunResult:
    """Train (or continue, ``resume=True``) the run ``cfg`` describes into ``cfg.out``.

    ``step_hooks`` run after every optimiser step (logging, or a test's simulated Ctrl-C).

    Started by ``torchrun --nproc-per-node N``, the run is data parallel with no other
    setting (:mod:`retrieval_bio.distributed`): ``batch_size`` stays the global batch, every
    rank trains identical weights, the test encoding is sharded over the ranks, and only
    rank 0 writes the run folder and shows progress.

    Raises:
        RunFolderError: ``cfg.out`` already holds a run and ``resume`` is False, or
            ``resume`` is True and there is no checkpoint to continue.
    """
    run_dir = Path(cfg.out)
    ckpt = run_dir / CHECKPOINT
    if resume and not ckpt.is_file():
        raise RunFolderError(f"--resume: {ckpt} does not exist; start the run without --resume")
    if not resume and ckpt.is_file():
        raise RunFolderError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
            f"--out"
        )
    # Everything that can fail on a bad option (device, data, backbone, weights, a learner
    # that cannot drive the model) runs before the folder is written, so a failed start
    # leaves no half-made run behind.
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    eval_device = resolve_device(cfg.eval_device) if cfg.eval_device else None
    dist_info, device = distributed.init_from_env(device)
    eval_device = distributed.local_device(eval_device) if eval_device else device
    try:
        return _train(cfg, run_dir, resume, device, eval_device,
                      progress if distributed.is_main() else None, step_hooks)
    finally:
        distributed.shutdown(dist_info)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, device: torch.device,
           eval_device: torch.device, progress: Progress | None,
           step_hooks: Sequence[StepHook]) -> RunResult:
    ckpt = run_dir / CHECKPOINT
    main = distributed.is_main()
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must be a "
                          f"multiple of the {world} processes torchrun started (each takes an "
                          f"equal share); use e.g. {world * max(cfg.batch_size // world, 1)}")
    splits = load_splits(cfg)
    if world > 1:  # each rank read the data itself: a skipped item on one would desync all
        sizes = distributed.gather_objects(splits.sizes())
        if any(other != sizes[0] for other in sizes):
            raise DatasetError(f"the processes loaded different splits (sizes per rank: "
                               f"{sizes}): an image was unreadable on some ranks only. Check "
                               f"the files (retrieval-bio data check) and start again")
    model = build_model(cfg, splits, load_weights=not resume)
    objective = build_objective(cfg, splits)
    groups = param_groups(cfg, model, objective)
    optimizer, schedule = build_optimizer(cfg, groups)
    eval_splits = load_splits(cfg, augment=False) if cfg.augment else splits
    learner = build_learner(cfg)
    if not resume:  # a resumed run's fitted parts (a dictionary) come from its checkpoint
        fit_unsupervised_parts(model, eval_splits.train, cfg.seed, progress)
        refresh_statistics(model, eval_splits.train, device, cfg.batch_size)
    amp = cfg.amp and device.type == "cuda" and learner.uses_amp
    validate, select = (make_validate(cfg, eval_splits, device, amp=amp) if learner.supervised
                        else (None, None))
    epoch_hooks = [lambda m, epoch: learner.epoch_metrics(m)]
    if learners.is_layer_rule(cfg.rule) and cfg.rule != "bp":
        epoch_hooks.append(_diagnostics_hook(splits, objective, device))
    if _statistics_parts(model):
        epoch_hooks.append(lambda m, epoch: refresh_statistics(
            m, eval_splits.train, device, cfg.batch_size) or {})
    if main and world > 1 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning("BatchNorm under data parallelism normalises each rank's share of the "
                    "batch (as DDP does): the run is not the one-process run exactly")
    trainer = Trainer(  # writes nothing until fit()
        model, objective, splits.train, param_groups=groups, optimizer=optimizer,
        schedule=schedule, learner=learner, epochs=cfg.epochs,
        batch_size=cfg.batch_size, seed=cfg.seed, device=device, amp=cfg.amp,
        num_workers=cfg.num_workers, run_dir=run_dir, validate=validate, select_metric=select,
        step_hooks=step_hooks, epoch_hooks=epoch_hooks, progress=progress,
        divergence_factor=cfg.divergence_factor,
        history_hooks=[_curve_hook(cfg, run_dir, select, learner)] if main else [],
        chance_level=1.0 / splits.num_classes if cfg.task == "classify" else None,
    )
    # after every real parameter update (not one that AMP's scaler skipped): brSF redraws
    # M, every rule drops its cached B
    rules.attach(trainer.optimizer, model)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
    try:
        state = trainer.fit(resume=resume)
    except DatasetError as e:
        if ckpt.is_file():
            kept = (f"progress up to epoch {trainer.state.epoch + 1}, step {trainer.state.step} "
                    f"is saved in {ckpt}" if trainer.saved_on_error else
                    f"the last checkpoint is {ckpt}")
            todo = f"retrieval-bio {cfg.stage} --resume --skip-bad --out {_q(run_dir)}"
        else:
            kept = "no checkpoint was written yet"
            todo = (f"retrieval-bio {cfg.stage} --config {_q(run_dir / CONFIG)} --skip-bad "
                    f"--out {_q(run_dir)}")
        raise DatasetError(f"{e}\nTraining stopped on bad data; {kept}. Continue without the "
                           f"bad items: {todo}") from e
    metrics = {"stage": cfg.stage, "task": cfg.task, "rule": cfg.rule,
               "learner": learner.describe(), "optimizer": cfg.optimizer,
               "schedule": schedule.describe() if schedule else {"name": "none"},
               "best_epoch": state.best_epoch, "skipped_items": skipped_items(splits)}
    if not learner.supervised:
        return _finish_unsupervised(cfg, trainer, splits, run_dir, metrics)
    metrics[select] = state.best_value
    distributed.barrier()  # rank 0 has written best.pt
    if (run_dir / BEST).is_file():  # the test metrics below come from these weights
        metrics["test_weights"] = weights_info(run_dir / BEST, {"epoch": state.best_epoch})
    model.to(eval_device)
    try:
        metrics.update(evaluate_test(cfg, model, splits, eval_device,
                                     run_dir if main else None, progress))
    except DatasetError as e:
        if main:
            update_metrics(run_dir, **metrics)
        raise DatasetError(
            f"{e}\nThe test evaluation stopped on this item, but the trained run is kept: "
            f"{run_dir / BEST} holds the selected epoch ({state.best_epoch}). Finish the "
            f"evaluation with the bad items skipped: retrieval-bio evaluate {_q(run_dir)} "
            f"--encode --skip-bad") from e
    # an earlier `evaluate` described other weights (a resumed run may select another epoch)
    if main:
        metrics = update_metrics(run_dir, drop=is_evaluation_key, **metrics)
    distributed.barrier()  # every file is written before any rank returns
    return RunResult(run_dir, cfg, model, splits, metrics)


def _finish_unsupervised(cfg: RunConfig, trainer: Trainer, splits: DatasetSplits,
                         run_dir: Path, metrics: dict[str, Any]) -> RunResult:
    """An unsupervised stage (a Krotov–Hopfield layer) keeps its last epoch: the learner's
    ``finish`` (convergence checks, pruning) runs on it, and the result is ``best.pt``. The
    head is untrained, so no test metric is computed; the metrics say how to train it."""
    model = trainer.model
    extra = trainer.learner.finish(model)
    if not distributed.is_main():  # every rank pruned the same weights; rank 0 writes
        distributed.barrier()
        return RunResult(run_dir, cfg, model, splits, metrics)
    for text in extra.get("warnings", []):
        log.warning(text)
    atomic_torch_save({"model": model.state_dict(), "objective": trainer.objective.state_dict(),
                       "epoch": trainer.state.epoch}, run_dir / BEST)
    metrics.update(extra, best_epoch=trainer.state.epoch,
                   test_weights=weights_info(run_dir / BEST, {"epoch": trainer.state.epoch}),
                   next_stage=(f"the head is untrained (this stage ignores labels); train it "
                               f"on the frozen layer: retrieval-bio finetune --init "
                               f"{_q(run_dir)} --freeze-backbone --rule bp --optimizer adam "
                               f"--lr-head 1e-3 --weight-decay 0 --out RUN2"))
    metrics = update_metrics(run_dir, drop=is_evaluation_key, **metrics)
    distributed.barrier()
    return RunResult(run_dir, cfg, model, splits, metrics)


def _statistics_parts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "needs_statistics", False)]


@torch.no_grad()
def refresh_statistics(model: nn.Module, train_set, device: torch.device, batch_size: int
                       ) -> None:
    """Re-estimate the full-training-set statistics some modules keep (the spectral
    regulariser's eigenbasis): each module whose ``needs_statistics`` is true observes its
    inputs between ``start_statistics()`` and ``end_statistics()`` while the whole model
    runs, in eval mode, over ``train_set`` (evaluation transforms), then updates its buffers.
    Before training and after every epoch, so the basis an epoch uses comes from the weights
    it started with. Under data parallelism each rank runs its share of the batches and
    ``end_statistics()`` sums the ranks' statistics."""
    from torch.utils.data import DataLoader

    parts = _statistics_parts(model)
    if not parts:
        return
    was = model.training
    model.eval()
    try:
        for part in parts:
            part.start_statistics()
        bs = max(batch_size, 256)
        for x, _, _ in DataLoader(distributed.shard_dataset(train_set, bs), batch_size=bs):
            model(x.to(device))
        for part in parts:
            part.end_statistics()
    finally:
        model.train(was)


#: at most this many training images feed an unsupervised fit (a front end's dictionary)
FIT_IMAGES = 10_000


def fit_unsupervised_parts(model: nn.Module, train_set, seed: int,
                           progress: Progress | None = None) -> None:
    """Fit every part of ``model`` that learns from images alone before training (a
    sparse-coding front end's dictionary, ``fit_data(images, seed)``), on up to
    :data:`FIT_IMAGES` training images of a seeded subsample; parts already fitted are left
    as they are."""
    from torch.utils.data import DataLoader, Subset

    parts = [m for m in model.modules() if callable(getattr(m, "fit_data", None))
             and not getattr(m, "is_fitted", False)]
    if not parts:
        return
    n = len(train_set)
    order = np.random.default_rng(seed).permutation(n)[:FIT_IMAGES]
    subset = Subset(train_set, np.sort(order).tolist())
    images = torch.cat([x for x, _, _ in DataLoader(subset, batch_size=256)])
    log.info("fitting %d unsupervised part(s) on %d training images", len(parts), len(images))
    for part in parts:
        part.fit_data(images, seed)


def _q(path: Path | str) -> str:
    """``path`` quoted for a shell, so a suggested command can be pasted as it is."""
    return shlex.quote(str(path))


def _curve_hook(cfg: RunConfig, run_dir: Path, select: str | None,
                learner: learners.Learner):
    # an unsupervised stage has no loss: its curve is the learner's convergence measure
    left = (("loss", "training loss (epoch mean)") if learner.has_loss else
            getattr(learner, "curve", ("loss", "training loss (epoch mean)")))

    def hook(state: TrainerState) -> None:
        from ..eval.plots import training_curve_plot

        training_curve_plot(run_dir / CURVE, state.history, select,
                            f"{cfg.stage} {cfg.rule}: {cfg.backbone} on {cfg.dataset}",
                            left=left)

    return hook


def evaluate_test(
    cfg: RunConfig, model: TaskModel, splits: DatasetSplits, device: torch.device,
    run_dir: Path | None, progress: Progress | None = None, *, amp: bool = False,
) -> dict[str, Any]:
    """Test metrics of the selected model: accuracy on the query split (classify), or
    codes of query and database written to ``run_dir/codes.npz`` (``None``: not written),
    the database codes indexed in a FAISS binary index (``database.index``) and mAP@k
    (hash). ``amp``: float16 and channels_last encoding on CUDA."""
    bs = max(cfg.batch_size, 128)
    if cfg.task == "classify":
        logits, labels, _ = encode(model, splits.query, batch_size=bs, device=device,
                                   progress=progress, description="test", amp=amp,
                                   num_workers=cfg.num_workers)
        return {"test_accuracy": accuracy(logits, labels)}
    codes = encode_codes(cfg, model, splits, device, run_dir, progress, amp=amp)
    k = retrieval_k(cfg, splits)
    return {"map@k": float(map_at_k(codes["query_codes"], codes["db_codes"],
                                    codes["query_labels"], codes["db_labels"], k)), "k": k}


def encode_codes(
    cfg: RunConfig, model: TaskModel, splits: DatasetSplits, device: torch.device,
    dest: Path | None, progress: Progress | None = None, *, amp: bool = False,
) -> dict[str, np.ndarray]:
    """int8 ±1 codes, uint8 multi-hot labels and ids of the query and database splits
    (the arrays of ``codes.npz``); with ``dest``, also written there as ``codes.npz`` and
    the database indexed in ``database.index`` (kind ``cfg.index``)."""
    bs = max(cfg.batch_size, 128)
    q, ql, qi = encode(model, splits.query, batch_size=bs, device=device, progress=progress,
                       description="encoding queries", amp=amp, num_workers=cfg.num_workers)
    d, dl, di = encode(model, splits.database, batch_size=bs, device=device,
                       progress=progress, description="encoding database", amp=amp,
                       num_workers=cfg.num_workers)
    q_codes, d_codes = sign_codes(q), sign_codes(d)
    if dest is not None:
        save_codes(dest / "codes.npz", q_codes, ql, qi, d_codes, dl, di)
        build_index(cfg, d_codes).save(dest / INDEX)
    return {"query_codes": q_codes, "query_labels": ql.astype(np.uint8), "query_ids": qi,
            "db_codes": d_codes, "db_labels": dl.astype(np.uint8), "db_ids": di}


def build_index(cfg: RunConfig, db_codes: np.ndarray) -> HammingIndex:
    """The run's FAISS index (kind ``cfg.index``) over int8 ±1 database codes; kinds that
    need training (ivf) are trained on the database itself."""
    index = HammingIndex(cfg.bits, kind=cfg.index)
    if not index.is_trained:
        index.train(db_codes)
    return index.add(db_codes)


def save_codes(path: Path, q: np.ndarray, ql: np.ndarray, qi: np.ndarray, d: np.ndarray,
               dl: np.ndarray, di: np.ndarray) -> None:
    """``codes.npz``: int8 ±1 codes, multi-hot labels and split ids of query and database."""
    buf = io.BytesIO()
    np.savez_compressed(buf, query_codes=q, query_labels=ql.astype(np.uint8), query_ids=qi,
                        db_codes=d, db_labels=dl.astype(np.uint8), db_ids=di)
    atomic_write_bytes(path, buf.getvalue())


def _diagnostics_hook(splits: DatasetSplits, objective: nn.Module, device: torch.device):
    """Per-epoch rule diagnostics (SPEC §2): B-vs-W angles and input-gradient angles on
    one fixed validation batch."""
    from torch.utils.data import DataLoader

    images, labels, _ = next(iter(DataLoader(splits.validation, batch_size=32)))

    def hook(model: nn.Module, epoch: int) -> dict[str, Any]:
        batch = (images.to(device), labels.to(device))
        w_angles = rules.layer_angles(model)
        g_angles = rules.gradient_angles(model, lambda out, y: objective(out.float(), y), batch)
        return {"diagnostics": {
            "mean_feedback_angle_deg": float(np.mean(list(w_angles.values()))),
            "mean_grad_angle_deg": float(np.mean(list(g_angles.values()))),
            "feedback_angle_deg": w_angles, "grad_angle_deg": g_angles,
        }}

    return hook


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The complete ``config.yaml`` of a run folder (see :meth:`RunConfig.load_run`).

    Raises:
        RunFolderError: ``run_dir`` holds no ``config.yaml``.
    """
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: {path} does not exist")
    return RunConfig.load_run(path)


@dataclass
class LoadedRun:
    """A finished run folder opened for evaluation or attack (:func:`open_run`)."""

    config: RunConfig
    model: TaskModel
    splits: DatasetSplits | None
    weights: dict[str, Any]  # {"file", "epoch", "sha256"} of the weights loaded


def open_run(
    run_dir: str | Path, *, weights: str = "best", device: torch.device | str = "cpu",
    load_data: bool = True, skip_bad: bool | None = None,
) -> LoadedRun:
    """The config, trained model (rule conversion included) and dataset splits of a run.

    Args:
        weights: ``"best"`` (``best.pt``, the selected epoch; the default), ``"last"``
            (``checkpoint.pt``) or a checkpoint file. A missing ``best.pt`` is an error that
            says how to use the last checkpoint; it is never replaced silently.
        device: where the model goes (returned in eval mode).
        load_data: also load the dataset splits (with evaluation transforms).
        skip_bad: skip unreadable items (default: the run's own ``skip_bad``).

    Raises:
        RunFolderError: no ``config.yaml``, or the weights file is missing or damaged.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    path = run_weights(run_dir, weights)
    ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt)
    splits = load_splits(cfg, augment=False, skip_bad=skip_bad) if load_data else None
    num_classes = splits.num_classes if splits is not None else state["head.weight"].shape[0]
    model = learners.prepare_model(task_model(cfg, num_classes), cfg.rule, scale=cfg.scale,
                                   seed=cfg.seed)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunFolderError(f"{path} does not fit the model of {run_dir / CONFIG} "
                             f"({cfg.backbone}, {cfg.task}): {e}") from e
    return LoadedRun(cfg, model.to(device).eval(), splits, weights_info(path, ckpt))


def load_run(
    run_dir: str | Path, *, device: torch.device | str = "cpu", load_data: bool = True,
    weights: str = "best",
) -> tuple[RunConfig, TaskModel, DatasetSplits | None]:
    """``(config, model, splits)`` of :func:`open_run` (the selected epoch by default)."""
    run = open_run(run_dir, weights=weights, device=device, load_data=load_data)
    return run.config, run.model, run.splits
