"""Write the run configs of the experiment grids of seeds 001 and 000: the one source of
truth for them.

    python configs/make_configs.py            # rewrites configs/classification, hashing,
                                              # pepita, ep
    python configs/make_configs.py --out DIR  # writes the same tree under DIR

* ``classification/<dataset>-<backbone>-<rule>.yaml``: the classification grid of seed 001
  (Table 1): AlexNet / VGG-16 / ResNet-18 x CIFAR-10 / ImageNet-100 / ImageNet x BP / uSF /
  frSF / brSF, cross-entropy, a new classifier layer on ImageNet weights (36 runs).
* ``hashing/<dataset>-<backbone>-<rule>.yaml``: the hashing grid (Table 2): the same
  backbones and rules x CIFAR-10 / NUS-WIDE / MS-COCO / ImageNet-100, 32-bit HyP² hash
  layer (48 runs).

* ``ep/<dataset>-{ep,bp-cnn}.yaml``: seed 002's Equilibrium-Propagation ConvNets on
  CIFAR-10 / CIFAR-100 and their BP-CNN baseline (ep.md §1.6, §2.8), plus
  ``ep/digits-{ep,cnn}-small.yaml``, the CPU-sized pair.
* ``frontends/``: seed 004's structural defenses: the polarizing front end on MNIST /
  Fashion-MNIST with the same classifier without it, the CIFAR-10 sparse-coding and HaH
  runs (GPU), and ``frontends/digits-*.yaml``, CPU-sized versions on digits.
* ``krotov/``: seed 003's Krotov–Hopfield layer (``*-kh-layer``, then ``*-kh-head``) and
  the same-shape BP / L2 / JReg / SpecReg baselines on CIFAR-10 (GPU) and digits (CPU).
* ``pepita/<table>/<dataset>-<rule>.yaml``: seed 000's PEPITA-vs-BP grid (Tables 1-4):
  natural / natural-pgdval / pgd-at / fgsm-at x MNIST / Fashion-MNIST / CIFAR-10 /
  CIFAR-100 x pepita / bp, a 1x1024 MLP trained from scratch (``stage: train``) with
  momentum SGD and the paper's per-table learning rates (32 runs); plus
  ``pepita/digits-*.yaml``, CPU-sized versions on scikit-learn's bundled digits (4 runs).

Every seed 001 run uses SPEC §3's fine-tuning protocol: Adam β = (0.9, 0.999), weight decay
5e-4, lr 1e-5 backbone / 1e-4 new layer, 20 epochs, batch 32, 224 px inputs. Seed 000's
protocol is :data:`PEPITA_PROTOCOL` (docs/learners.md). ``root`` values are placeholders
(``/data/<dataset>``): edit them to where the data lives (configs/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

BACKBONES = ("alexnet", "vgg16", "resnet18")
RULES = ("bp", "usf", "frsf", "brsf")

#: dataset -> (protocol, placeholder root) per grid.
CLASSIFICATION = {
    "cifar10": ("classification", "/data/cifar10"),
    "imagenet100": ("seed001", "/data/imagenet100"),
    "imagenet": ("classification", "/data/imagenet"),
}
HASHING = {
    "cifar10": ("cifar10", "/data/cifar10"),
    "nuswide21": ("seed001", "/data/nuswide"),
    "coco": ("seed001", "/data/coco"),
    "imagenet100": ("seed001", "/data/imagenet100"),
}

#: SPEC §3 (seed 001's fine-tuning protocol), written out so every file is self-contained.
PROTOCOL = {
    "weights": "imagenet", "scale": "norm", "image_size": 224, "augment": False,
    "lr_backbone": 1e-5, "lr_head": 1e-4, "weight_decay": 5e-4, "betas": [0.9, 0.999],
    "epochs": 20, "batch_size": 32, "num_workers": 8, "seed": 0,
}

# -- seed 000: PEPITA vs BP (Tables 1-4) ----------------------------------------------------
#: table folder -> (seed 000 table, what differs from natural training)
PEPITA_TABLES = {
    "natural": (1, {}),
    "natural-pgdval": (2, {"val_attack": "pgd", "select": "adversarial"}),
    "pgd-at": (3, {"adv_train": "pgd"}),
    "fgsm-at": (4, {"adv_train": "fgsm"}),
}
#: dataset -> (placeholder root, image_size, grey); MNIST / F-MNIST: one grey channel, 784
#: inputs; CIFAR: 3072 inputs. Every one uses protocol ``classification`` (10 % of train,
#: seeded and class-stratified, is the validation split).
PEPITA_DATASETS = {
    "mnist": ("/data/mnist", 28, True),
    "fashion-mnist": ("/data/fashion-mnist", 28, True),
    "cifar10": ("/data/cifar10", 32, False),
    "cifar100": ("/data/cifar100", 32, False),
}
PEPITA_RULES = ("pepita", "bp")
#: seed 000's learning rates η (its "learning rate" table), per table and rule, in the order
#: MNIST, F-MNIST, CIFAR-10, CIFAR-100. Table 2's 0.378 lies outside the paper's own grid
#: [0.001, 0.3]; it is what the paper reports.
PEPITA_LRS = {
    "natural": {"bp": (0.123, 0.051, 0.008, 0.035), "pepita": (0.255, 0.016, 0.012, 0.029)},
    "natural-pgdval": {"bp": (0.378, 0.273, 0.039, 0.180),
                       "pepita": (0.378, 0.037, 0.025, 0.061)},
    "pgd-at": {"bp": (0.052, 0.030, 0.012, 0.014), "pepita": (0.067, 0.012, 0.012, 0.021)},
    "fgsm-at": {"bp": (0.097, 0.010, 0.012, 0.027), "pepita": (0.097, 0.027, 0.016, 0.041)},
}
#: seed 000 §3.1: 1x1024 ReLU, dropout 0.1 (one mask shared by PEPITA's two passes), biases
#: on both layers, momentum SGD without weight decay, x0.1 at epochs 60 and 90, batch 64.
PEPITA_MODEL = {"hidden": [1024], "dropout": 0.1, "bias": True, "output_bias": True}
PEPITA_PROTOCOL = {
    "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
    "schedule": "multistep", "milestones": [60, 90], "gamma": 0.1,
    "epochs": 100, "batch_size": 64, "augment": False, "loss": "mse-softmax",
    "amp": False,  # fp32 for both rules: PEPITA's ΔW never use float16, so BP does not either
}
#: seed 000 §3.1 (advertorch's LinfPGDAttack): L∞ ε 0.3, step 0.1, 40 steps, random start;
#: adversarial training learns from [x; x_adv].
PEPITA_ATTACK = {"adv_eps": 0.3, "adv_steps": 40, "adv_alpha": 0.1, "adv_random_start": True,
                 "adv_mix": "both"}
PEPITA_OPTIONS = {"output_error": "first", "f_scale": 0.05}
#: the CPU-sized digits versions: 30 epochs, x0.1 at 15 and 25, η picked on validation
#: accuracy from {0.01, 0.03, 0.1} (configs/README.md); FGSM-AT at ε 0.1.
DIGITS_LRS = {"bp": 0.1, "pepita": 0.1}
DIGITS_FGSM_EPS = 0.1

# -- seed 002: Equilibrium Propagation ConvNets and their BP-CNN baseline ----------------------
#: ep.md §1.6 (the settings recorded for the 5 published seeds): SGD momentum 0.9 (no
#: Nesterov), coupled weight decay 3e-4 on every group, per-layer rates conv1..4 then the
#: readout, cosine over 100 epochs to 1e-5 then held for the last 20, batch 128, fp32, the
#: symmetric ±β estimator with T_free / T_nudge / T_eval = 250 / 30 / 250 and β 0.5 (CIFAR-10)
#: or 1.0 (CIFAR-100); attacks unroll 70 steps (ep.md §2.2).
EP_PROTOCOL = {
    "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 3e-4,
    # lr_backbone is unused while layer_lrs is set; written so the file says it all
    "lr_backbone": 0.25, "layer_lrs": [0.25, 0.15, 0.10, 0.08], "lr_head": 0.05,
    "schedule": "cosine",
    "t_max": 100, "lr_min": 1e-5, "epochs": 120, "batch_size": 128, "amp": False,
    "augment": True, "t_free": 250, "t_nudge": 30, "t_eval": 250, "t_attack": 70,
    "learner_options": {"estimator": "symmetric"},
}
EP_BETA = {"cifar10": 0.5, "cifar100": 1.0}
#: seed 002's BP-CNN (ep.md §2.8): the same topology with BatchNorm and ReLU, SGD lr 0.1
#: momentum 0.9, StepLR(step 8, γ 0.3) over 45 epochs, batch 200. Its weight decay is not
#: recorded: none.
BP_CNN_PROTOCOL = {
    "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
    "lr_backbone": 0.1, "lr_head": 0.1, "schedule": "multistep",
    "milestones": [8, 16, 24, 32, 40], "gamma": 0.3, "epochs": 45, "batch_size": 200,
    "augment": True,
}
#: the CPU-sized pair on the bundled digits at 16 px (ep-small / cnn-small): the runs of
#: the issue's closing note; the EP rates are ep.md §3.4's (0.2, 0.1, readout 0.05)
EP_DIGITS = {
    "ep": {**EP_PROTOCOL, "lr_backbone": 0.2, "layer_lrs": [0.2, 0.1], "lr_head": 0.05,
           "t_max": None,
           "epochs": 15, "batch_size": 32, "augment": False, "t_free": None, "t_nudge": None,
           "t_eval": None, "t_attack": None},
    "cnn": {**BP_CNN_PROTOCOL, "weight_decay": 3e-4, "lr_backbone": 0.05, "lr_head": 0.05,
            "schedule": "cosine", "milestones": [], "lr_min": 1e-5, "epochs": 15,
            "batch_size": 32, "augment": False, "amp": False},
}
EP_HEADER = """\
# Generated by configs/make_configs.py; edit that script, not this file.
# Seed 002 ({what}), {dataset}. EDIT `root:` to the folder holding {dataset} (configs/README.md).
# Run: retrieval-bio train --config {path}
# The paper's 5 seeds: add --seed S --out runs/{key}-sS for S in 11 13 17 19 31.
# Differences from the published code: model selection on a 10 % validation split (the code
# picks the best *test* epoch); the toolkit's augmentation (random crop with 4 px reflect
# padding + flip) for both datasets, where the CIFAR-10 code pads with edge values.
"""
EP_DIGITS_HEADER = """\
# Generated by configs/make_configs.py; edit that script, not this file.
# CPU-sized seed 002 pair ({what}) on scikit-learn's bundled digits at 16 px: no data to place,
# a minute or so on a 2-core CPU. Run: retrieval-bio train --config {path}
"""


def ep_grid() -> dict[str, dict]:
    """``{relative path without .yaml: config}``: seed 002's EP and BP-CNN runs on CIFAR-10
    and CIFAR-100, and the digits pair."""
    out: dict[str, dict] = {}
    for dataset in ("cifar10", "cifar100"):
        common = {"stage": "train", "task": "classify", "dataset": dataset,
                  "root": f"/data/{dataset}", "protocol": "classification", "image_size": 32,
                  "dataset_options": {"val_fraction": 0.1}}
        out[f"ep/{dataset}-ep"] = {**common, "rule": "ep", "backbone": f"ep-{dataset}",
                                   **EP_PROTOCOL, "beta": EP_BETA[dataset], "seed": 11,
                                   "out": f"runs/ep/{dataset}-ep"}
        out[f"ep/{dataset}-bp-cnn"] = {**common, "rule": "bp", "backbone": f"cnn-{dataset}",
                                       **BP_CNN_PROTOCOL, "amp": False, "seed": 11,
                                       "out": f"runs/ep/{dataset}-bp-cnn"}
    for kind, rule in (("ep", "ep"), ("cnn", "bp")):
        settings = {k: v for k, v in EP_DIGITS[kind].items() if v is not None}
        out[f"ep/digits-{kind}-small"] = {
            "stage": "train", "task": "classify", "rule": rule, "backbone": f"{kind}-small",
            "dataset": "digits", "image_size": 16, **settings, "seed": 11,
            "out": f"runs/ep/digits-{kind}-small"}
    return out


FRONTEND_HEADER = """\
# Generated by configs/make_configs.py; edit that script, not this file.
# Seed 004 ({what}).{root}
# Run: retrieval-bio train --config {path}
"""
#: seed 004 §2: Adam 1e-3, batch 64, 3 stages of 20 epochs, the code's lr drop at epoch 50
POLARIZING_PROTOCOL = {
    "stage": "train", "task": "classify", "rule": "bp", "backbone": "polar-cnn",
    "protocol": "classification", "image_size": 28, "dataset_options": {"val_fraction": 0.1},
    "optimizer": "adam", "lr_backbone": 1e-3, "lr_head": 1e-3, "weight_decay": 0.0,
    "batch_size": 64, "epochs": 60, "schedule": "multistep", "milestones": [50],
    "gamma": 0.1, "seed": 0,
}
#: seed 004 Table 4.1: the quantiser threshold c per dataset
POLARIZING_THRESHOLD = {"mnist": 0.5, "fashion-mnist": 0.3}


def frontend_grid() -> dict[str, dict]:
    """``{relative path without .yaml: config}``: seed 004's front-end runs and CPU-sized
    versions on digits."""
    out: dict[str, dict] = {}
    for dataset, c in POLARIZING_THRESHOLD.items():
        common = {**POLARIZING_PROTOCOL, "dataset": dataset, "root": f"/data/{dataset}"}
        out[f"frontends/{dataset}-polarizing"] = {
            **common, "frontend": "polarizing",
            "frontend_options": {"filters": 25, "threshold": c, "stage_epochs": [20, 20]},
            "out": f"runs/frontends/{dataset}-polarizing"}
        out[f"frontends/{dataset}-plain"] = {
            **common, "epochs": 20, "schedule": "none", "milestones": [],
            "out": f"runs/frontends/{dataset}-plain"}
    cifar = {"stage": "train", "task": "classify", "rule": "bp", "dataset": "cifar10",
             "root": "/data/cifar10", "protocol": "classification", "image_size": 32,
             "augment": True, "dataset_options": {"val_fraction": 0.1}, "seed": 0}
    out["frontends/cifar10-sparse-coding"] = {
        **cifar, "backbone": "resnet18", "frontend": "sparse-coding",
        "frontend_options": {"atoms": 500, "patch": 4, "stride": 2, "t": 50, "dropout": 0.95,
                             "beta": 3.0, "eps_d": 8 / 255, "dict_alpha": 1.0,
                             "dict_steps": 1000, "dict_batch": 5, "decoder": [300, 100],
                             "ensemble": 10},
        "optimizer": "sgd", "momentum": 0.9, "lr_backbone": 0.05, "lr_head": 0.05,
        "weight_decay": 5e-4, "batch_size": 64, "epochs": 70, "schedule": "cosine",
        "out": "runs/frontends/cifar10-sparse-coding"}
    for name, blocks in (("hah", 6), ("hah-baseline", 0)):
        out[f"frontends/cifar10-{name}"] = {
            **cifar, "backbone": "hah-vgg16", "model_options": {"hah_blocks": blocks},
            "optimizer": "adam", "lr_backbone": 1e-3, "lr_head": 1e-3, "weight_decay": 0.0,
            "batch_size": 128, "epochs": 100, "schedule": "multistep", "milestones": [60, 80],
            "gamma": 0.1, "out": f"runs/frontends/cifar10-{name}"}
    digits = {"stage": "train", "task": "classify", "rule": "bp", "dataset": "digits",
              "image_size": 16, "optimizer": "adam", "lr_backbone": 2e-3, "lr_head": 2e-3,
              "weight_decay": 0.0, "batch_size": 32, "epochs": 10, "seed": 0}
    # digits has 17 grey levels, blurred further by the upsampling to 16 px: z rarely reaches
    # 0.5, so the Fashion-MNIST threshold 0.3 (with 0.5 the quantised code was all zeros)
    polar = {"frontend": "polarizing",
             "frontend_options": {"threshold": 0.3, "stage_epochs": [3, 3]}}
    out["frontends/digits-polarizing"] = {**digits, "backbone": "polar-cnn", **polar,
                                          "out": "runs/frontends/digits-polarizing"}
    out["frontends/digits-plain"] = {**digits, "backbone": "polar-cnn",
                                     "out": "runs/frontends/digits-plain"}
    out["frontends/digits-polarizing-hash"] = {
        **digits, "task": "hash", "bits": 16, "backbone": "polar-cnn", **polar, "epochs": 15,
        "out": "runs/frontends/digits-polarizing-hash"}
    out["frontends/digits-sparse-coding"] = {
        **digits, "backbone": "small-cnn", "frontend": "sparse-coding",
        "frontend_options": {"atoms": 60, "t": 5, "dropout": 0.5, "decoder": [16, 8],
                             "dict_steps": 200, "ensemble": 4},
        "out": "runs/frontends/digits-sparse-coding"}
    out["frontends/digits-hah-small"] = {**digits, "backbone": "hah-small",
                                         "out": "runs/frontends/digits-hah-small"}
    return out


#: seed 003 / [H] (krotov.md (a)): the Krotov–Hopfield layer on CIFAR-10 and its shape
KH_CIFAR = {"hidden": 2000, "p": 3.0, "power": 4.5, "input_norm": 3.0, "sigma": 1.0}
KH_LEARNER = {"k": 2, "delta": 0.4, "prune": "threshold", "prune_threshold": 0.0015}
#: the BP baselines: Linear(3072, 2000) (He), ReLU, Linear(2000, 10); regulariser per name
SHLP_BASELINES = {"bp": ({}, 0.0), "l2": ({}, 1e-3),  # 5e-4·Σ‖P‖² is weight decay 1e-3
                  "jreg": ({"jacobian_penalty": 1e-3, "jacobian_projections": 3}, 0.0),
                  "specreg": ({"spectral_penalty": 1.0, "spectral_alpha": 1.0,
                               "spectral_tau": 0}, 0.0)}


def krotov_grid() -> dict[str, dict]:
    """``{relative path without .yaml: config}``: seed 003's Krotov–Hopfield layer, its head
    and the four same-shape BP baselines on CIFAR-10 (GPU), and CPU-sized versions on
    digits (8 px grey, 100 units)."""
    out: dict[str, dict] = {}
    for dataset, size in (("cifar10", {}), ("digits", {"image_size": 8})):
        cpu = dataset == "digits"
        base = {"task": "classify", "dataset": dataset, "seed": 0, "augment": False,
                "image_size": 32, **size}
        if not cpu:
            base.update(root="/data/cifar10", protocol="classification")
        kh = ({"hidden": 100, "p": 3.0, "power": 4.5, "input_norm": 3.0, "sigma": 1.0,
               "grey": True} if cpu else KH_CIFAR)
        shape = {"hidden": kh["hidden"], "input_norm": 3.0, **({"grey": True} if cpu else {})}
        layer = f"runs/krotov/{dataset}-kh-layer"
        out[f"krotov/{dataset}-kh-layer"] = {
            "stage": "train", **base, "rule": "krotov", "backbone": "kh", "model_options": kh,
            # digits: a converged unit's weight variance is ~0.03 at N = 64 (0.0015 is
            # CIFAR's N = 3072 value), an unused one keeps the init's ~1
            "learner_options": {**KH_LEARNER, **({"prune_threshold": 0.1} if cpu else {})},
            "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
            "lr_backbone": 0.05 if cpu else 0.02, "lr_head": 0.0, "schedule": "linear",
            "epochs": 300 if cpu else 1000, "batch_size": 50 if cpu else 1000, "out": layer}
        adam = {"optimizer": "adam", "weight_decay": 0.0, "epochs": 100 if cpu else 1000,
                "batch_size": 100 if cpu else 1000}
        out[f"krotov/{dataset}-kh-head"] = {
            "stage": "finetune", **base, "rule": "bp", "backbone": "kh", "model_options": kh,
            "init": layer, "freeze_backbone": True, **adam, "lr_head": 1e-3,
            "out": f"runs/krotov/{dataset}-kh-head"}
        for name, (reg, wd) in SHLP_BASELINES.items():
            sched = ({} if cpu else
                     {"schedule": "multistep", "milestones": [30, 90, 120, 160], "gamma": 0.5}
                     if name != "specreg" else
                     {"schedule": "cosine", "t_max": 1000})
            out[f"krotov/{dataset}-{name}"] = {
                "stage": "train", **base, "rule": "bp", "backbone": "shlp",
                "model_options": {**shape, **reg}, **adam, "weight_decay": wd,
                "lr_backbone": 1e-3, "lr_head": 1e-3, **sched,
                "out": f"runs/krotov/{dataset}-{name}"}
    return out


KROTOV_HEADER = """\
# Generated by configs/make_configs.py; edit that script, not this file.
# Seed 003 (Krotov–Hopfield, docs/learners.md): {what}.{root}
# Run: retrieval-bio {stage} --config {path}
"""
KROTOV_WHAT = {
    "kh-layer": "stage 1, the unsupervised KH layer (labels unused), then convergence checks "
                "and pruning",
    "kh-head": "stage 2, the linear head on ReLU(h)^4.5 of the frozen, pruned layer of "
               "stage 1 (run that first)",
    "bp": "BP baseline: the same shape, Linear + ReLU, no regulariser",
    "l2": "L2 baseline: 5e-4·Σ‖P‖² over every parameter, written as Adam weight decay 1e-3",
    "jreg": "JReg baseline: 1e-3·‖∂ReLU(h)/∂x‖_F², 3 random projections (the Jacobian of the "
            "activations, not [H]'s of h)",
    "specreg": "SpecReg baseline (Nassar et al. 2020): BatchNorm + spectral loss, basis from "
               "the full training set's covariance, refreshed every epoch",
}


HEADER = """\
# Generated by configs/make_configs.py ({grid} grid of seed 001); edit that script, not this
# file. EDIT `root:` to the folder holding {dataset} on your machine (see configs/README.md).
# Run: retrieval-bio finetune --config {path}
"""


def grid() -> dict[str, dict]:
    """``{relative path without .yaml: config mapping}`` of both grids."""
    out: dict[str, dict] = {}
    for name, datasets, task, extra in (("classification", CLASSIFICATION, "classify", {}),
                                        ("hashing", HASHING, "hash", {"bits": 32})):
        for dataset, (protocol, root) in datasets.items():
            for backbone in BACKBONES:
                for rule in RULES:
                    key = f"{name}/{dataset}-{backbone}-{rule}"
                    out[key] = {
                        "stage": "finetune", "task": task, "backbone": backbone, "rule": rule,
                        "dataset": dataset, "root": root, "protocol": protocol, **extra,
                        **PROTOCOL, "out": f"runs/{key}",
                    }
    return out


PEPITA_HEADER = """\
# Generated by configs/make_configs.py; edit that script, not this file.
# Seed 000, Table {table} ({rule}): {what}.
# EDIT `root:` to the folder holding {dataset} on your machine (see configs/README.md).
# Run: retrieval-bio train --config {path}
# The paper's 5 seeds: add --seed S --out runs/pepita/{key}-sS for S in 0..4.
"""
PEPITA_WHAT = {
    "natural": "natural training, epoch kept on natural validation accuracy",
    "natural-pgdval": "natural training, epoch kept on PGD-40 validation accuracy",
    "pgd-at": "PGD-40 adversarial training, epoch kept on natural validation accuracy",
    "fgsm-at": "FGSM adversarial training, epoch kept on natural validation accuracy",
}
DIGITS_HEADER = """\
# Generated by configs/make_configs.py; edit that script, not this file.
# CPU-sized seed 000 ({rule}, {what}) on scikit-learn's bundled 8x8 digits
# (upsampled to 28 px; no data to place), the same MLP and optimiser, 30 epochs.
# Run: retrieval-bio train --config {path}
"""


def _pepita_model(grey: bool) -> dict:
    return {"backbone": "mlp", "model_options": {**PEPITA_MODEL, "grey": grey}}


def _pepita_rule(rule: str) -> dict:
    return {"rule": rule, **({"learner_options": dict(PEPITA_OPTIONS)} if rule == "pepita"
                             else {})}


def pepita_grid() -> dict[str, dict]:
    """``{relative path without .yaml: config mapping}`` of seed 000's grid and the digits
    versions."""
    out: dict[str, dict] = {}
    for table, (_, extra) in PEPITA_TABLES.items():
        for i, (dataset, (root, size, grey)) in enumerate(PEPITA_DATASETS.items()):
            for rule in PEPITA_RULES:
                lr = PEPITA_LRS[table][rule][i]
                key = f"pepita/{table}/{dataset}-{rule}"
                out[key] = {
                    "stage": "train", "task": "classify", **_pepita_model(grey),
                    **_pepita_rule(rule), "dataset": dataset, "root": root,
                    "protocol": "classification", "image_size": size,
                    "dataset_options": {"val_fraction": 0.1}, **PEPITA_PROTOCOL,
                    "lr_backbone": lr, "lr_head": lr, **extra, **PEPITA_ATTACK, "seed": 0,
                    "out": f"runs/{key}",
                }
    for rule in PEPITA_RULES:
        for suffix, extra in (("", {}), ("-fgsm-at", {"adv_train": "fgsm",
                                                      "adv_eps": DIGITS_FGSM_EPS,
                                                      "adv_mix": "both"})):
            key = f"pepita/digits-{rule}{suffix}"
            lr = DIGITS_LRS[rule]
            out[key] = {
                "stage": "train", "task": "classify", **_pepita_model(True), **_pepita_rule(rule),
                "dataset": "digits", "image_size": 28,
                **{**PEPITA_PROTOCOL, "milestones": [15, 25], "epochs": 30},
                "lr_backbone": lr, "lr_head": lr, **extra, "seed": 0, "out": f"runs/{key}",
            }
    return out


FRONTEND_WHAT = {
    "polarizing": "polarizing front end, 3 training stages, ch. 4.1",
    "plain": "the polarizing runs' classifier without the front end",
    "sparse-coding": "sparse-coding front end, ch. 4.2; ResNet-18 stands in for Madry's "
                     "ResNet-32, and a cosine schedule for the triangular cycle",
    "hah": "HaH VGG-16, 6 HaH blocks, ch. 5", "hah-baseline": "VGG-16 with weight-normalised "
    "convs, no HaH blocks: ch. 5's baseline", "polarizing-hash": "polarizing front end "
    "behind a 16-bit HyP² hash head (not in the seed)", "hah-small": "a 4-conv HaH net with 2 "
    "HaH blocks",
}


def _header(key: str, cfg: dict) -> str:
    path = f"configs/{key}.yaml"
    if key.startswith("krotov/"):
        kind = key.split("/")[1].removeprefix(cfg["dataset"] + "-")
        root = (" CPU-sized: 8 px grey digits, 100 units." if cfg["dataset"] == "digits" else
                "\n# EDIT `root:` to the folder holding cifar10 (see configs/README.md). "
                "Needs a GPU.")
        if cfg["dataset"] == "cifar10" and "milestones" in cfg:
            root += ("\n# [H]'s rates 1e-3/5e-4/2e-4/1e-4/1e-5 are approximated by halving "
                     "at the same epochs.")
        elif cfg["dataset"] == "cifar10" and cfg.get("schedule") == "cosine":
            root += ("\n# [H]'s 1e-3 to epoch 90, then 1e-3·exp(−(e−90)/30), is approximated "
                     "by a cosine.")
        return KROTOV_HEADER.format(what=KROTOV_WHAT[kind], root=root, stage=cfg["stage"],
                                    path=path)
    if key.startswith("frontends/"):
        kind = key.split("/")[1].removeprefix(cfg["dataset"] + "-")
        cpu = cfg["dataset"] == "digits"
        what = FRONTEND_WHAT[kind] + (", CPU-sized on digits at 16 px" if cpu else
                                      f" on {cfg['dataset']}")
        root = "" if cpu else (f"\n# EDIT `root:` to the folder holding {cfg['dataset']} "
                               f"(see configs/README.md).")
        if cfg["dataset"] == "cifar10":
            root += " Needs a GPU."
        return FRONTEND_HEADER.format(what=what, root=root, path=path)
    if key.startswith("ep/"):
        what = "Equilibrium Propagation, symmetric ±β" if cfg["rule"] == "ep" else (
            "BP-CNN baseline: the EP topology with BatchNorm + ReLU")
        if cfg["dataset"] == "digits":
            return EP_DIGITS_HEADER.format(what=what, path=path)
        return EP_HEADER.format(what=what, dataset=cfg["dataset"], path=path,
                                key=key)
    if not key.startswith("pepita/"):
        return HEADER.format(grid=key.split("/")[0], dataset=cfg["dataset"], path=path)
    parts = key.split("/")
    if len(parts) == 2:  # pepita/digits-*
        what = ("FGSM-AT at eps 0.1" if cfg.get("adv_train") == "fgsm"
                else "natural training")
        return DIGITS_HEADER.format(what=what, rule=cfg["rule"], path=path)
    table = parts[1]
    return PEPITA_HEADER.format(table=PEPITA_TABLES[table][0], what=PEPITA_WHAT[table],
                                rule=cfg["rule"], dataset=cfg["dataset"], path=path,
                                key=key.removeprefix("pepita/"))


def write(out_dir: Path) -> list[Path]:
    """Write every config of :func:`grid` and :func:`pepita_grid` under ``out_dir``;
    returns the files written."""
    written = []
    for key, cfg in {**grid(), **pepita_grid(), **ep_grid(), **frontend_grid(),
                     **krotov_grid()}.items():
        path = out_dir / f"{key}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_header(key, cfg) + yaml.safe_dump(cfg, sort_keys=False))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write classification/, hashing/ and pepita/ into")
    args = parser.parse_args()
    files = write(args.out)
    print(f"wrote {len(files)} configs under {args.out}")


if __name__ == "__main__":
    main()
