"""Every YAML file under configs/ loads as a RunConfig, and the experiment grids of seed 001
are complete, follow SPEC §3 and match what configs/make_configs.py generates."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from retrieval_bio.config import RunConfig, build_config
from retrieval_bio.datasets import DATASETS
from retrieval_bio.models import BACKBONES
from retrieval_bio.rules import RULES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))
BACKBONE_NAMES = ("alexnet", "vgg16", "resnet18")
RULE_NAMES = ("bp", "usf", "frsf", "brsf")


def _grid(name: str) -> dict[str, RunConfig]:
    return {p.stem: RunConfig.load(p) for p in sorted((CONFIGS / name).glob("*.yaml"))}


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_every_config_loads(path):
    cfg = RunConfig.load(path)  # unknown keys and bad values raise ConfigError
    assert cfg.dataset in DATASETS and cfg.backbone in BACKBONES and cfg.rule in RULES
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
    assert len(written) == 84
    generated = {p.relative_to(tmp_path): p.read_text() for p in written}
    committed = {p.relative_to(CONFIGS): p.read_text()
                 for sub in ("classification", "hashing") for p in (CONFIGS / sub).glob("*.yaml")}
    assert generated == committed, "configs drifted: run python configs/make_configs.py"
