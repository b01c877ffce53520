"""The typed run configuration: one YAML file reproduces a run.

``RunConfig`` holds every choice of a run. It is loaded from YAML
(``retrieval-bio finetune --config configs/x.yaml``), overridden by CLI flags,
validated (an unknown key or a bad value is an error naming it) and written into the run
folder as ``config.yaml``. Defaults follow seed 001's fine-tuning protocol (SPEC §3):
Adam β = (0.9, 0.999), weight decay 5e-4, lr 1e-5 for the backbone and 1e-4 for the new
layer, 20 epochs, batch 32, 32-bit codes.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; here it is the float a user means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads exponent floats without a dot (``1e-3``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it and the fix."""


STAGES = ("pretrain", "finetune", "train")
TASKS = ("classify", "hash")
SELECTS = ("natural", "adversarial")
SCALES = ("norm", "none", "init")
DEVICES = ("auto", "cpu", "cuda", "mps")  # and "cuda:N" for the N-th GPU
#: Keys a resumed run may change: they alter neither the math nor the data order of the
#: steps already taken (``skip_bad`` drops unreadable items; see docs/runs.md).
RESUME_SAFE = ("epochs", "skip_bad", "num_workers", "device", "eval_device", "data_cache",
               "out")


#: Keys newer than some run folders that do not change what a run trained (where it
#: evaluates, where decoded images are cached): a ``config.yaml`` without them takes their
#: defaults.
ADDED_LATER = ("eval_device", "data_cache")


@dataclass
class RunConfig:
    """Every choice of one run (pretrain, finetune or train; classification or hashing).

    Units: learning rates per step, ``image_size`` in px, ``bits`` = code length K, ε in
    [0, 1] pixels (L∞). ``rule`` is a layer rule (bp, fa, usf, frsf, brsf) or a learner
    (pepita); see :mod:`retrieval_bio.learners`.
    """

    stage: str = "finetune"
    task: str = "classify"
    backbone: str = "resnet18"
    weights: str | None = None  # None | "imagenet" | path to a state dict
    init: str | None = None  # run folder or checkpoint to start fine-tuning from
    rule: str = "bp"
    scale: str = "norm"
    learner_options: dict[str, Any] = field(default_factory=dict)  # e.g. pepita output_error
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. mlp hidden, grey
    frontend: str = "none"  # structural front end in front of the backbone (seed 004)
    frontend_options: dict[str, Any] = field(default_factory=dict)  # e.g. threshold: 0.3
    loss: str = "auto"  # auto: hyp2 (hash) / cross-entropy (classify); or mse-softmax
    dataset: str = "digits"
    root: str | None = None
    protocol: str | None = None
    image_size: int = 32
    augment: bool = False
    bits: int = 32
    k: int | None = None  # mAP@k cut-off; None = the dataset's protocol default
    lr_backbone: float = 1e-5
    lr_head: float = 1e-4
    proxy_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    schedule: str = "none"  # none | multistep | cosine | linear (per epoch)
    milestones: list[int] = field(default_factory=list)  # multistep: epochs (from 0)
    gamma: float = 0.1  # multistep factor
    t_max: int | None = None  # cosine / linear length in epochs (None: epochs)
    lr_min: float = 0.0  # cosine floor / linear end (absolute)
    layer_lrs: list[float] = field(default_factory=list)  # per backbone layer; []: lr_backbone
    freeze_backbone: bool = False  # train only the head (a kh layer's second stage)
    # energy-based (ep-*) backbones' dynamics; None: the backbone preset's (seed 002 CIFAR:
    # 250 / 30 / 250 / 70 steps, β 0.5 for CIFAR-10 and 1.0 for CIFAR-100)
    beta: float | None = None  # nudging strength β of EP
    t_free: int | None = None  # free-phase steps of a training step
    t_nudge: int | None = None  # steps of each nudged phase
    t_eval: int | None = None  # steps of a prediction (and of an attack's scoring)
    t_attack: int | None = None  # steps of the unroll an attack differentiates
    adv_train: str = "none"  # none | fgsm | pgd (classify) | hag (hash)
    val_attack: str = "none"  # attack of validation (val_adv_accuracy / val_adv_map)
    adv_eps: float = 0.3
    adv_steps: int = 40
    adv_alpha: float | None = None  # PGD step (None: adv_eps / 3)
    adv_random_start: bool = True
    adv_mix: str = "both"  # both: [x; x_adv] | adversarial: x_adv only
    select: str = "natural"  # the validation metric picking the epoch kept
    epochs: int = 20
    batch_size: int = 32
    num_workers: int | None = None  # None: auto (0 for in-memory data, else per-rank CPUs)
    seed: int = 0
    device: str = "auto"
    eval_device: str | None = None  # encoding / test / attacks (None: ``device``)
    amp: bool = True
    skip_bad: bool = False  # skip (and count) unreadable images and bad list lines
    index: str = "flat"  # FAISS index kind of database.index (see retrieval_bio.index)
    divergence_factor: float = 100.0  # stop when the loss exceeds this x its start; 0: off
    out: str = "runs/latest"
    data_cache: str | None = None  # folder of the decoded uint8 image cache (None: off)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # loader kwargs: lists=, ...

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------
    def validate(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for f in fields(self):
            value = getattr(self, f.name)
            value = _coerce(f.name, value, hints[f.name])
            setattr(self, f.name, value)
        _choice("stage", self.stage, STAGES)
        _choice("task", self.task, TASKS)
        _choice("scale", self.scale, SCALES)
        for key in ("device", "eval_device"):
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"cuda:\d+", value):
                _choice(key, value, DEVICES + ("cuda:N",))
        from .index import INDEX_KINDS  # late: keep `import config` light
        from .learners import MIXES, TRAINING_ATTACKS, rule_names
        from .losses import LOSSES
        from .models.frontends import frontend_names
        from .train.optim import OPTIMIZERS, SCHEDULES

        _choice("rule", self.rule, rule_names())
        _choice("frontend", self.frontend, ("none", *frontend_names()))
        if self.frontend_options and self.frontend == "none":
            raise ConfigError("frontend_options are given but frontend is none; set "
                              "--frontend (see 'retrieval-bio list frontends')")
        _choice("index", self.index, tuple(INDEX_KINDS))
        _choice("loss", self.loss, ("auto", *LOSSES.names()))
        _choice("optimizer", self.optimizer, tuple(OPTIMIZERS.names()))
        _choice("schedule", self.schedule, tuple(SCHEDULES.names()))
        # none, or an attack that can make training examples (for one task or another)
        adv_attacks = ("none", *dict.fromkeys(a for v in TRAINING_ATTACKS.values() for a in v))
        _choice("adv_train", self.adv_train, adv_attacks)
        _choice("val_attack", self.val_attack, adv_attacks)
        _choice("adv_mix", self.adv_mix, MIXES)
        _choice("select", self.select, SELECTS)
        if self.select == "adversarial" and self.val_attack == "none":
            raise ConfigError("select: adversarial needs a val_attack (fgsm | pgd | hag) to "
                              "score validation under attack; set --val-attack")
        if not 0 < self.adv_eps <= 1:
            raise ConfigError(f"adv_eps must lie in (0, 1] (L∞ in [0, 1] pixels), got "
                              f"{self.adv_eps}")
        if self.adv_steps < 1:
            raise ConfigError(f"adv_steps must be >= 1, got {self.adv_steps}")
        if self.adv_alpha is not None and self.adv_alpha <= 0:
            raise ConfigError(f"adv_alpha must be > 0, got {self.adv_alpha}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov: true needs optimizer: sgd with momentum > 0")
        if self.t_max is not None and self.t_max < 1:
            raise ConfigError(f"t_max must be >= 1 epoch, got {self.t_max}")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(
                set(self.milestones)):
            raise ConfigError(f"milestones must be increasing epochs >= 1, got "
                              f"{self.milestones}")
        if any(lr < 0 for lr in self.layer_lrs):
            raise ConfigError(f"layer_lrs must be >= 0, got {self.layer_lrs}")
        for name in DYNAMICS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError("schedule: multistep needs milestones, e.g. --milestones 60,90")
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        for name in ("image_size", "bits", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr_backbone", "lr_head", "proxy_lr_mult", "weight_decay",
                     "divergence_factor", "lr_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.task == "hash" and self.bits % 8:
            raise ConfigError(
                f"bits must be a multiple of 8 for hashing (codes are packed into bytes for "
                f"FAISS), got {self.bits}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must lie in [0, 1), got {self.betas}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    # -- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["milestones"] = list(self.milestones)
        d["layer_lrs"] = list(self.layer_lrs)
        return d

    def save(self, path: str | Path) -> None:
        from .runs import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.load_keys(path)[0]

    @classmethod
    def load_keys(cls, path: str | Path) -> tuple[RunConfig, list[str]]:
        """The config in YAML file ``path`` and the keys the file itself sets (the rest
        are defaults), from one read of the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = load_yaml(path.read_text()) or {}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        try:
            return cls.from_dict(data), list(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def load_run(cls, path: str | Path) -> RunConfig:
        """The ``config.yaml`` of a run folder, which the toolkit writes with every key: a
        file lacking keys (emptied or truncated) is refused rather than filled with
        defaults that would describe another run."""
        cfg, keys = cls.load_keys(path)
        lacking = [f.name for f in fields(cls) if f.name not in keys and f.name not in ADDED_LATER]
        if lacking:
            raise ConfigError(
                f"{path} lacks {', '.join(lacking[:6])}{' ...' if len(lacking) > 6 else ''}: "
                f"it is truncated or was edited; restore it (every run writes all keys)")
        return cfg

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with ``overrides`` applied (``None`` values are ignored: flag not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return RunConfig.from_dict({**self.to_dict(), **given})


#: the dynamics settings of energy-based backbones (passed to them as backbone options)
DYNAMICS = ("beta", "t_free", "t_nudge", "t_eval", "t_attack")


def stage_defaults(stage: str) -> dict[str, Any]:
    """Defaults that differ by stage: BP pre-training from scratch needs larger rates."""
    if stage in ("pretrain", "train"):  # from scratch: larger rates
        return {"stage": stage, "rule": "bp", "lr_backbone": 1e-3, "lr_head": 1e-3,
                "weight_decay": 5e-4, "epochs": 10}
    return {"stage": stage}


#: What ``finetune --init RUN`` takes from RUN's config unless given: the backbone the
#: weights were trained as, the input size they were trained at, and the backbone's options
#: (``model_options``: the shape of the weights, e.g. a kh layer's width; taken only when
#: the backbone is RUN's).
INHERITED_FROM_INIT = ("backbone", "image_size", "model_options")


def build_config(
    stage: str, config_file: str | Path | None = None, **overrides: Any
) -> RunConfig:
    """Stage defaults, then the YAML file, then CLI ``overrides`` (``None`` = not given).

    With ``init`` pointing at a run folder, the keys of :data:`INHERITED_FROM_INIT` that
    neither the file nor a flag sets are taken from that run's ``config.yaml``.
    """
    base = RunConfig.from_dict(stage_defaults(stage))
    explicit: set[str] = set()
    if config_file is not None:
        loaded, file_keys = RunConfig.load_keys(config_file)
        file_cfg = loaded.to_dict()
        keys = [k for k in file_keys if k != "stage"]
        if file_cfg["stage"] != stage and "stage" in file_keys:
            raise ConfigError(
                f"{config_file} is a {file_cfg['stage']} config; run it with 'retrieval-bio "
                f"{file_cfg['stage']} --config {config_file}'")
        if stage == "pretrain" and file_cfg["rule"] != "bp":
            raise ConfigError(f"{config_file} sets rule: {file_cfg['rule']}, but pre-training "
                              f"is backpropagation; use 'retrieval-bio finetune'")
        explicit |= set(keys)
        base = base.replace(**{k: file_cfg[k] for k in keys})
    explicit |= {k for k, v in overrides.items() if v is not None}
    cfg = base.replace(**overrides)
    inherited = _from_init(cfg.init, [k for k in INHERITED_FROM_INIT if k not in explicit])
    if inherited.get("backbone", cfg.backbone) != inherited.pop("_backbone", cfg.backbone):
        inherited.pop("model_options", None)  # options of another backbone
    return cfg.replace(**inherited) if inherited else cfg


def _from_init(init: str | None, keys: list[str]) -> dict[str, Any]:
    """``keys`` of the config of run folder ``init`` (nothing for a weights file)."""
    if not init or not keys:
        return {}
    cfg_path = Path(init) / "config.yaml"
    if not cfg_path.is_file():
        return {}
    source = RunConfig.load_run(cfg_path)
    return {**{k: getattr(source, k) for k in keys}, "_backbone": source.backbone}


def resume_config(
    run_dir: str | Path, stage: str, config_file: str | Path | None = None, **overrides: Any
) -> RunConfig:
    """The config a resumed run continues: the one stored in ``run_dir``, with ``out`` set
    to ``run_dir`` (wherever the folder has been moved or copied to).

    A key given again (by ``config_file`` or a non-``None`` override) must equal the stored
    value, unless it is in :data:`RESUME_SAFE`, in which case it is applied (and recorded
    when the run saves its config).

    Raises:
        ConfigError: no ``config.yaml`` in ``run_dir``; the stored run is of another stage;
            or a given value contradicts the stored one (both values are named).
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--resume: {path} does not exist, so there is no run to continue in {run_dir}; "
            f"start it without --resume")
    stored = RunConfig.load_run(path)
    given: dict[str, Any] = {}
    if config_file is not None:
        loaded, file_keys = RunConfig.load_keys(config_file)
        file_cfg = loaded.to_dict()
        given.update({k: file_cfg[k] for k in file_keys})
    given.update({k: v for k, v in overrides.items() if v is not None})
    given.pop("out", None)
    if stored.stage != stage:
        raise ConfigError(
            f"{run_dir} holds a {stored.stage} run; resume it with 'retrieval-bio "
            f"{stored.stage} --resume --out {run_dir}'")
    probe = stored.replace(**given)  # validates and normalises the given values
    done = _epochs_done(run_dir)
    if probe.epochs < done:
        raise ConfigError(f"--epochs {probe.epochs} is fewer than the {done} epochs {run_dir} "
                          f"has already trained; give --epochs {done} or more")
    apply: dict[str, Any] = {"out": str(run_dir)}
    for key in given:
        new, old = getattr(probe, key), getattr(stored, key)
        if new == old:
            continue
        if key == "epochs" and stored.schedule in ("cosine", "linear") and stored.t_max is None:
            raise ConfigError(
                f"--epochs {new}: the run's {stored.schedule} schedule spans its epochs "
                f"(t_max unset, so t_max = {old}); more epochs would change the rates of the "
                f"epochs already trained. Start a new run, or give t_max in new runs")
        if key in RESUME_SAFE:
            apply[key] = new
            continue
        raise ConfigError(
            f"--{key.replace('_', '-')} {_show(new)} contradicts the run being resumed "
            f"({path} has {key}: {_show(old)}); a resumed run continues its own config. Drop "
            f"the option, or start a new run with another --out. Options that may change on "
            f"resume: {', '.join('--' + k.replace('_', '-') for k in RESUME_SAFE)}")
    return stored.replace(**apply)


def _epochs_done(run_dir: Path) -> int:
    from .runs import METRICS, read_json

    return len(read_json(run_dir / METRICS).get("history", []))


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; convert harmless forms (int->float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(name, v, args[0]) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-5 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value


__all__ = [
    "DYNAMICS", "RESUME_SAFE", "ConfigError", "RunConfig", "build_config", "resume_config",
    "stage_defaults",
]
