"""Every run config under configs/ loads as a RunConfig; the experiment grids of seed 001
(SPEC §3) and seed 000 (PEPITA vs BP, Tables 1-4) are complete, follow their papers and match
what configs/make_configs.py generates."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from retrieval_bio import learners
from retrieval_bio.config import RunConfig, build_config
from retrieval_bio.datasets import DATASETS
from retrieval_bio.learners import rule_names
from retrieval_bio.models import BACKBONES
from retrieval_bio.train.pipeline import build_learner, task_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: run configs: every YAML file but the grid specs of `retrieval-bio tradeoff` and `sweep`
#: (configs/tradeoff/, configs/sweeps/: not RunConfigs; tested with those commands)
GRIDS = ("tradeoff", "sweeps")
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in GRIDS)
GENERATED = ("classification", "hashing", "pepita", "ep", "frontends", "krotov")
BACKBONE_NAMES = ("alexnet", "vgg16", "resnet18")
RULE_NAMES = ("bp", "usf", "frsf", "brsf")


def _grid(name: str) -> dict[str, RunConfig]:
    return {p.stem: RunConfig.load(p) for p in sorted((CONFIGS / name).glob("*.yaml"))}


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_every_config_loads(path):
    cfg = RunConfig.load(path)  # unknown keys and bad values raise ConfigError
    assert cfg.dataset in DATASETS and cfg.backbone in BACKBONES and cfg.rule in rule_names()
    assert build_config(cfg.stage, path) == cfg  # what `--config FILE` runs is the file


def test_demo_runs_without_data_or_download():
    cfg = RunConfig.load(CONFIGS / "demo-digits.yaml")
    assert (cfg.dataset, cfg.backbone, cfg.weights, cfg.root) == ("digits", "small-cnn", None,
                                                                  None)


@pytest.mark.parametrize("name, datasets, task", [
    ("classification", {"cifar10": "classification", "imagenet100": "seed001",
                        "imagenet": "classification"}, "classify"),
    ("hashing", {"cifar10": "cifar10", "nuswide21": "seed001", "coco": "seed001",
                 "imagenet100": "seed001"}, "hash"),
])
def test_grid_is_complete_and_follows_the_paper(name, datasets, task):
    grid = _grid(name)
    want = {f"{d}-{b}-{r}" for d, b, r in itertools.product(datasets, BACKBONE_NAMES,
                                                               RULE_NAMES)}
    assert set(grid) == want and len(grid) == 12 * len(datasets)  # 36 / 48
    for stem, cfg in grid.items():
        dataset, backbone, rule = stem.split("-")
        assert (cfg.dataset, cfg.backbone, cfg.rule) == (dataset, backbone, rule)
        assert cfg.protocol == datasets[dataset]
        assert (cfg.stage, cfg.task, cfg.weights, cfg.init) == ("finetune", task, "imagenet",
                                                                None)
        # SPEC §3, seed 001 §5: Adam (0.9, 0.999), wd 5e-4, lr 1e-5 / 1e-4, 20 epochs, batch 32
        assert (cfg.lr_backbone, cfg.lr_head, cfg.weight_decay) == (1e-5, 1e-4, 5e-4)
        assert (cfg.betas, cfg.epochs, cfg.batch_size, cfg.image_size) == ((0.9, 0.999), 20,
                                                                           32, 224)
        assert cfg.scale == "norm" and cfg.seed == 0 and cfg.k is None
        if task == "hash":
            assert cfg.bits == 32
        assert cfg.out == f"runs/{name}/{stem}"
        assert cfg.root and cfg.root.startswith("/data/")  # placeholder the README explains


def test_run_folders_are_distinct():
    outs = [RunConfig.load(p).out for p in ALL]
    assert len(outs) == len(set(outs))


def test_committed_grid_is_what_the_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_configs", CONFIGS / "make_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write(tmp_path)
    assert len(written) == 36 + 48 + 32 + 4 + 6 + 12 + 12
    generated = {p.relative_to(tmp_path): p.read_text() for p in written}
    committed = {p.relative_to(CONFIGS): p.read_text()
                 for sub in GENERATED for p in (CONFIGS / sub).rglob("*.yaml")}
    assert generated == committed, "configs drifted: run python configs/make_configs.py"


# -- seed 000: PEPITA vs BP ---------------------------------------------------------------------
#: seed 000's learning-rate table, transcribed from /work/shared/methods/pepita.md (c) (not
#: imported from make_configs.py): table -> rule -> (MNIST, F-MNIST, CIFAR-10, CIFAR-100)
SEED000_LR = {
    1: {"bp": (0.123, 0.051, 0.008, 0.035), "pepita": (0.255, 0.016, 0.012, 0.029)},
    2: {"bp": (0.378, 0.273, 0.039, 0.180), "pepita": (0.378, 0.037, 0.025, 0.061)},
    3: {"bp": (0.052, 0.030, 0.012, 0.014), "pepita": (0.067, 0.012, 0.012, 0.021)},
    4: {"bp": (0.097, 0.010, 0.012, 0.027), "pepita": (0.097, 0.027, 0.016, 0.041)},
}
PEPITA_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
#: folder -> seed 000 table
PEPITA_TABLES = {"natural": 1, "natural-pgdval": 2, "pgd-at": 3, "fgsm-at": 4}
#: dataset -> (image_size, grey, MLP inputs d, classes)
PEPITA_SHAPES = {"mnist": (28, True, 784, 10), "fashion-mnist": (28, True, 784, 10),
                 "cifar10": (32, False, 3072, 10), "cifar100": (32, False, 3072, 100)}
PEPITA_FILES = sorted((CONFIGS / "pepita").rglob("*.yaml"))


def _check_pepita_common(cfg: RunConfig, rule: str, grey: bool) -> None:
    """seed 000 §3.1: 1x1024 MLP, dropout 0.1, biases on both layers, momentum SGD without
    weight decay or Nesterov, batch 64, MSE through the softmax for BP, learning rate on both
    groups; PEPITA with the first-pass error and F at 0.05 x the He bound."""
    assert (cfg.stage, cfg.task, cfg.backbone, cfg.weights, cfg.init) == (
        "train", "classify", "mlp", None, None)
    assert cfg.model_options == {"hidden": [1024], "dropout": 0.1, "bias": True,
                                 "output_bias": True, "grey": grey}
    assert cfg.rule == rule
    assert cfg.learner_options == ({"output_error": "first", "f_scale": 0.05}
                                   if rule == "pepita" else {})
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.weight_decay) == ("sgd", 0.9, False,
                                                                           0.0)
    assert (cfg.schedule, cfg.gamma, cfg.batch_size) == ("multistep", 0.1, 64)
    assert cfg.loss == "mse-softmax" and cfg.augment is False and cfg.seed == 0
    assert cfg.lr_backbone == cfg.lr_head


def test_pepita_grid_is_complete_and_follows_seed_000():
    grid = {p.relative_to(CONFIGS / "pepita").with_suffix("").as_posix(): RunConfig.load(p)
            for p in PEPITA_FILES if p.parent != CONFIGS / "pepita"}
    want = {f"{t}/{d}-{r}" for t, d, r in itertools.product(PEPITA_TABLES, PEPITA_DATASETS,
                                                            ("pepita", "bp"))}
    assert set(grid) == want and len(grid) == 32
    for key, cfg in grid.items():
        table_dir, stem = key.split("/")
        dataset, rule = stem.rsplit("-", 1)
        table = PEPITA_TABLES[table_dir]
        size, grey, _, _ = PEPITA_SHAPES[dataset]
        _check_pepita_common(cfg, rule, grey)
        assert cfg.dataset == dataset and cfg.image_size == size
        assert cfg.protocol == "classification"
        assert cfg.dataset_options == {"val_fraction": 0.1}  # 10 % of train, seeded
        assert cfg.root == {"mnist": "/data/mnist", "fashion-mnist": "/data/fashion-mnist",
                            "cifar10": "/data/cifar10", "cifar100": "/data/cifar100"}[dataset]
        assert (cfg.epochs, cfg.milestones) == (100, [60, 90])
        assert cfg.lr_backbone == SEED000_LR[table][rule][PEPITA_DATASETS.index(dataset)], key
        # advertorch's LinfPGDAttack as seed 000 §3.1 sets it: ε 0.3, step 0.1, 40 steps
        assert (cfg.adv_eps, cfg.adv_steps, cfg.adv_alpha, cfg.adv_random_start,
                cfg.adv_mix) == (0.3, 40, 0.1, True, "both")
        assert cfg.adv_train == {1: "none", 2: "none", 3: "pgd", 4: "fgsm"}[table]
        assert (cfg.val_attack, cfg.select) == (
            ("pgd", "adversarial") if table == 2 else ("none", "natural"))
        assert cfg.out == f"runs/pepita/{key}"


def test_pepita_digits_configs_run_on_a_cpu():
    cfgs = {p.stem: RunConfig.load(p) for p in PEPITA_FILES if p.parent == CONFIGS / "pepita"}
    assert set(cfgs) == {f"digits-{r}{s}" for r in ("pepita", "bp") for s in ("", "-fgsm-at")}
    for stem, cfg in cfgs.items():
        rule = stem.split("-")[1]
        _check_pepita_common(cfg, rule, grey=True)
        assert (cfg.dataset, cfg.root, cfg.image_size) == ("digits", None, 28)
        assert (cfg.epochs, cfg.milestones) == (30, [15, 25])
        assert cfg.lr_backbone in (0.01, 0.03, 0.1)  # the grid configs/README.md reports
        assert cfg.lr_backbone == cfgs[f"digits-{rule}"].lr_backbone
        # digits are 8x8 images upsampled: ε 0.3 wipes them out, so FGSM-AT runs at 0.1
        assert (cfg.adv_train, cfg.adv_eps) == (("fgsm", 0.1) if stem.endswith("fgsm-at")
                                                else ("none", 0.3))
        assert (cfg.val_attack, cfg.select) == ("none", "natural")
        assert cfg.out == f"runs/pepita/{stem}"


@pytest.mark.parametrize("path", PEPITA_FILES,
                         ids=[str(p.relative_to(CONFIGS)) for p in PEPITA_FILES])
def test_pepita_config_builds_its_model_and_learner(path):
    """The model and learner a run would train: the MLP takes d = 784 (grey MNIST) or 3072
    (CIFAR) inputs, and PEPITA accepts it."""
    cfg = build_config("train", path)
    _, grey, d, classes = PEPITA_SHAPES.get(cfg.dataset, (28, True, 784, 10))
    model = task_model(cfg, classes)
    net = model.backbone.net
    assert net.in_features == d and net.grey is grey
    assert [layer.out_features for layer in net.linears] == [1024]
    assert model.head.out_features == classes and model.head.bias is not None
    assert all(layer.bias is not None for layer in net.linears)
    learners.prepare_model(model, cfg.rule, seed=cfg.seed)
    learner = build_learner(cfg)
    learner.check_model(model)
    described = learner.describe()
    assert described["learner"] == ("pepita" if cfg.rule == "pepita" else "autograd")
    assert described.get("adv_train", "none") == cfg.adv_train


# -- seed 002: EP ConvNets and the BP-CNN baseline ---------------------------------------------
EP_FILES = sorted((CONFIGS / "ep").glob("*.yaml"))


def test_ep_configs_follow_seed_002():
    """The settings recorded for seed 002's published seeds (/work/shared/methods/ep.md §1.6,
    transcribed here, not imported): β 0.5 / 1.0, T 250 / 30 / 250, SGD 0.9, wd 3e-4,
    per-layer rates 0.25 / 0.15 / 0.10 / 0.08 and 0.05 for the readout, cosine T_max 100 to
    1e-5 over 120 epochs, batch 128; the BP-CNN: SGD 0.1, x0.3 every 8 epochs, 45 epochs."""
    cfgs = {p.stem: RunConfig.load(p) for p in EP_FILES}
    assert set(cfgs) == {"cifar10-ep", "cifar100-ep", "cifar10-bp-cnn", "cifar100-bp-cnn",
                         "digits-ep-small", "digits-cnn-small"}
    for dataset, beta in (("cifar10", 0.5), ("cifar100", 1.0)):
        ep = cfgs[f"{dataset}-ep"]
        assert (ep.rule, ep.backbone, ep.stage, ep.dataset) == ("ep", f"ep-{dataset}", "train",
                                                                 dataset)
        assert (ep.beta, ep.t_free, ep.t_nudge, ep.t_eval, ep.t_attack) == (beta, 250, 30, 250,
                                                                            70)
        assert (ep.optimizer, ep.momentum, ep.nesterov, ep.weight_decay) == ("sgd", 0.9, False,
                                                                           3e-4)
        assert ep.layer_lrs == [0.25, 0.15, 0.10, 0.08] and ep.lr_head == 0.05
        assert (ep.schedule, ep.t_max, ep.lr_min, ep.epochs) == ("cosine", 100, 1e-5, 120)
        assert (ep.batch_size, ep.amp, ep.learner_options) == (128, False,
                                                               {"estimator": "symmetric"})
        bp = cfgs[f"{dataset}-bp-cnn"]
        assert (bp.rule, bp.backbone) == ("bp", f"cnn-{dataset}")
        assert (bp.lr_backbone, bp.momentum, bp.gamma, bp.epochs, bp.batch_size) == (
            0.1, 0.9, 0.3, 45, 200)
        assert bp.milestones == [8, 16, 24, 32, 40]
    for stem in ("digits-ep-small", "digits-cnn-small"):
        assert (cfgs[stem].dataset, cfgs[stem].root, cfgs[stem].image_size) == ("digits", None,
                                                                                16)


@pytest.mark.parametrize("path", EP_FILES, ids=[p.stem for p in EP_FILES])
def test_ep_config_builds_its_model_with_one_rate_per_layer(path):
    cfg = build_config("train", path)
    classes = 100 if cfg.dataset == "cifar100" else 10
    model = task_model(cfg, classes)
    if cfg.rule == "ep":
        net = model.backbone.net
        learners.prepare_model(model, "ep")
        assert (net.beta, net.t_eval) == (cfg.beta or 0.5, cfg.t_eval or 40)
        from retrieval_bio.train.pipeline import param_groups

        groups = param_groups(cfg, model, build_learner(cfg) and _objective(cfg, classes))
        assert [g["lr"] for g in groups] == [*cfg.layer_lrs, cfg.lr_head]
    assert model.head.in_features == (512 if cfg.dataset == "cifar10" else
                                      1024 if cfg.dataset == "cifar100" else 512)


def _objective(cfg, classes):
    from retrieval_bio.losses import create_loss

    return create_loss("cross-entropy", num_classes=classes)
