"""Write the run configs of the experiment grids of seeds 001 and 000: the one source of
truth for them.

    python configs/make_configs.py            # rewrites configs/classification, hashing, pepita
    python configs/make_configs.py --out DIR  # writes the same tree under DIR

* ``classification/<dataset>-<backbone>-<rule>.yaml``: the classification grid of seed 001
  (Table 1): AlexNet / VGG-16 / ResNet-18 x CIFAR-10 / ImageNet-100 / ImageNet x BP / uSF /
  frSF / brSF, cross-entropy, a new classifier layer on ImageNet weights (36 runs).
* ``hashing/<dataset>-<backbone>-<rule>.yaml``: the hashing grid (Table 2): the same
  backbones and rules x CIFAR-10 / NUS-WIDE / MS-COCO / ImageNet-100, 32-bit HyP² hash
  layer (48 runs).

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


def _header(key: str, cfg: dict) -> str:
    path = f"configs/{key}.yaml"
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
    for key, cfg in {**grid(), **pepita_grid()}.items():
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
