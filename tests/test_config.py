"""RunConfig: YAML round trip, precedence, and errors that name the bad key or value."""

from __future__ import annotations

import pytest
import yaml

from retrieval_bio.config import ConfigError, RunConfig, build_config


def test_round_trip(tmp_path):
    cfg = RunConfig(backbone="vgg16", rule="frsf", bits=64, betas=(0.8, 0.99), epochs=3,
                    lr_backbone=2e-5, dataset_options={"lists": "x"})
    path = tmp_path / "c.yaml"
    cfg.save(path)
    back = RunConfig.load(path)
    assert back == cfg
    assert back.betas == (0.8, 0.99)


def test_defaults_follow_the_paper_protocol():
    cfg = RunConfig()
    assert (cfg.lr_backbone, cfg.lr_head, cfg.weight_decay) == (1e-5, 1e-4, 5e-4)
    assert (cfg.epochs, cfg.batch_size, cfg.bits, cfg.betas) == (20, 32, 32, (0.9, 0.999))


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"backbone": "resnet18", "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig.load(path)


@pytest.mark.parametrize("key, value", [
    ("epochs", "ten"), ("epochs", 0), ("rule", "hebbian"), ("task", "segment"),
    ("betas", [0.9]), ("amp", "yes"), ("lr_head", -1.0), ("scale", "big"),
])
def test_bad_values_are_named(key, value):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_dict({key: value})


def test_hash_codes_must_fill_whole_bytes():
    with pytest.raises(ConfigError, match="bits must be a multiple of 8"):
        RunConfig.from_dict({"task": "hash", "bits": 12})
    assert RunConfig.from_dict({"task": "classify", "bits": 12}).bits == 12  # unused there


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr_backbone: 1e-5\n")  # PyYAML reads this as a string
    assert RunConfig.load(path).lr_backbone == 1e-5


def test_precedence_stage_then_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "bits": 16}))
    cfg = build_config("pretrain", path, bits=48, seed=None)
    assert cfg.epochs == 7  # from the file, over the pretrain default
    assert cfg.bits == 48  # the flag wins
    assert cfg.lr_backbone == 1e-3  # pretrain default, not in the file
    assert cfg.seed == 0  # None = flag not given


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads 1e-3 as a string; configs and KEY=VALUE flags read it as 0.001."""
    from retrieval_bio.config import load_yaml

    assert load_yaml("[1e-3, -2E+4, 1.5e3, 12, abc]") == [0.001, -20000.0, 1500.0, 12, "abc"]
    path = tmp_path / "c.yaml"
    path.write_text("lr_head: 1e-3\nmodel_options: {jacobian_penalty: 1e-3}\n")
    cfg = RunConfig.load(path)
    assert cfg.lr_head == 0.001 and cfg.model_options == {"jacobian_penalty": 0.001}
