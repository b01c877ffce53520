"""Krotov–Hopfield (seed 003 / PNAS 2019): one step against a hand computation, k >= 2,
pruning, convergence checks, labels unused, and the two-stage run (layer, then head)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from retrieval_bio.cli import app
from retrieval_bio.config import ConfigError
from retrieval_bio.datasets import TensorSplit
from retrieval_bio.learners import KrotovHopfield, StepContext, create_learner, prepare_model
from retrieval_bio.learners.krotov import convergence, gmm_cutoff, prune_units
from retrieval_bio.losses import create_loss
from retrieval_bio.models import create_model
from retrieval_bio.runs import load_checkpoint
from retrieval_bio.train import Trainer
from retrieval_bio.train.optim import create_optimizer


def _kh(hidden=5, p=3.0, image_size=2, seed=0, **options):
    torch.manual_seed(seed)
    return create_model("kh", "classify", num_classes=3, image_size=image_size, hidden=hidden,
                        p=p, grey=True, **options).double()


def _ctx():
    return StepContext(torch.device("cpu"), False, torch.amp.GradScaler("cuda", enabled=False))


def _by_hand(W, X, p, k, delta, radius=1.0):
    """[K]'s notebook update in numpy float64 with explicit loops: rank each sample's
    currents, +1 to the first, −Δ to the k-th, ΔW = Σ_b g (R^p v − h W), then divide by
    the largest |ΔW|."""
    K, N = W.shape
    Ws = np.sign(W) * np.abs(W) ** (p - 1)
    dW = np.zeros_like(W)
    for b in range(len(X)):
        v = X[b] / (np.abs(X[b]) ** 3).sum() ** (1 / 3)  # the model's x / ‖x‖_3
        h = np.array([sum(Ws[m, i] * v[i] for i in range(N)) for m in range(K)])
        order = np.argsort(-h)
        g = np.zeros(K)
        g[order[0]] = 1.0
        g[order[k - 1]] = -delta
        for m in range(K):
            dW[m] += g[m] * (radius ** p * v - h[m] * W[m])
    return dW / np.abs(dW).max()


@pytest.mark.parametrize(("p", "k", "delta"), [(3.0, 2, 0.4), (2.0, 3, 0.3), (4.0, 4, 0.5)])
def test_one_step_equals_the_hand_computation(p, k, delta):
    model = _kh(hidden=6, p=p)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(7, 3, 2, 2, generator=g, dtype=torch.float64)
    x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # grey images: the mean is exact
    w = model.backbone.net.currents.weight
    expected = w.detach().numpy() + 0.05 * _by_hand(
        w.detach().numpy(), x[:, 0].reshape(7, -1).numpy(), p, k, delta)
    learner = KrotovHopfield(k=k, delta=delta)
    learner.prepare(model, None)
    opt = torch.optim.SGD([w], lr=0.05, momentum=0, weight_decay=0)
    assert learner.training_step(model, None, x, torch.zeros(7, 3), _ctx()) is None
    assert float(w.grad.abs().max()) == pytest.approx(1.0)  # max-normalised
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_rank_one_is_refused():
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        KrotovHopfield(k=1)
    with pytest.raises(ConfigError, match="k must be"):
        create_learner("krotov", options={"k": 1})


def test_krotov_refuses_other_backbones_and_a_frozen_layer():
    with pytest.raises(ConfigError, match="--backbone kh"):
        prepare_model(create_model("mlp", image_size=4, hidden=[4]), "krotov")
    model = _kh()
    model.backbone.freeze()
    with pytest.raises(ConfigError, match="frozen"):
        KrotovHopfield().prepare(model, None)


def test_pruning_zeroes_exactly_the_units_over_the_threshold():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 0.03, 0.05, 0.2, 1.0, 0.04])
    w = torch.randn(6, 500, generator=g) * scales[:, None]
    before = w.clone()
    variances = np.var(before.numpy().astype(np.float64), axis=1, ddof=1)
    threshold = 0.0015
    pruned = prune_units(w, threshold)
    np.testing.assert_array_equal(pruned.numpy(), variances > threshold)
    assert pruned.any() and not pruned.all()
    assert torch.all(w[pruned] == 0)
    assert torch.equal(w[~pruned], before[~pruned])


def test_gmm_cutoff_separates_two_populations():
    rng = np.random.default_rng(0)
    logv = np.concatenate([rng.normal(-7.5, 0.3, 300), rng.normal(-4.0, 0.3, 80)])
    cut = gmm_cutoff(np.exp(logv))
    assert cut is not None and -6.5 < np.log(cut) < -5.0  # between the two means
    assert gmm_cutoff(np.exp(rng.normal(-6, 0.3, 300))) is None  # one population


def test_convergence_criteria():
    model = _kh(hidden=10, image_size=3)
    layer = model.backbone.net
    w = torch.rand(10, 9, dtype=torch.float64) + 0.1
    w = w / w.pow(3).sum(1, keepdim=True).pow(1 / 3)  # ‖W_μ‖_3 = 1 exactly
    layer.currents.weight.data.copy_(w)
    assert convergence(layer)["converged"]
    layer.currents.weight.data[0] *= 1.5  # one unit of ten off: 10 % is not < 10 %
    assert convergence(layer)["norm_off_fraction"] == pytest.approx(0.1)
    assert not convergence(layer)["converged"]
    layer.currents.weight.data[0] = -0.6  # the wrong attractor: mean weight < −R/2
    c = convergence(layer)
    assert c["wrong_attractor_units"] == 1 and not c["converged"]


def _digits_like(labels_seed):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(labels_seed))
    return TensorSplit(x, torch.nn.functional.one_hot(y, 3).float())


def test_the_unsupervised_phase_ignores_labels():
    weights = []
    for labels_seed in (1, 2):  # other labels for the same images
        model = _kh(hidden=8, image_size=4, seed=5).float()
        groups = [{"params": list(model.parameters()), "lr": 0.05}]
        opt = create_optimizer("sgd", groups, momentum=0.0)
        trainer = Trainer(model, create_loss("cross-entropy", num_classes=3),
                          _digits_like(labels_seed), param_groups=groups, optimizer=opt,
                          epochs=3, batch_size=10, seed=1, learner=KrotovHopfield(),
                          divergence_factor=0)
        trainer.fit()
        weights.append(model.backbone.net.currents.weight.detach().clone())
    assert not torch.equal(weights[0], _kh(hidden=8, image_size=4, seed=5).float()
                           .backbone.net.currents.weight)  # it did learn
    assert torch.equal(weights[0], weights[1])


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_two_stage_run_layer_then_frozen_head(tmp_path):
    layer_run, head_run = tmp_path / "kh", tmp_path / "head"
    code, out = _invoke(
        "train", "--rule", "krotov", "--backbone", "kh", "--image-size", "8", "--model-opt",
        "grey=true", "--model-opt", "hidden=30", "--optimizer", "sgd", "--momentum", "0",
        "--weight-decay", "0", "--lr-backbone", "0.05", "--schedule", "linear", "--epochs", "30",
        "--batch-size", "50", "--learner-opt", "prune_threshold=0.1", "--device", "cpu",
        "--out", layer_run)
    assert code == 0, out
    metrics = json.loads((layer_run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 30 and "test_accuracy" not in metrics
    assert {"convergence", "convergence_after_pruning", "pruning"} <= set(metrics)
    assert all("convergence" in h and h["loss"] is None for h in metrics["history"])
    kept = load_checkpoint(layer_run / "best.pt")["model"]["backbone.net.currents.weight"]
    pruned = (kept.abs().sum(1) == 0).sum()
    assert 0 < int(pruned) == metrics["pruning"]["units_pruned"] < 30

    code, out = _invoke("finetune", "--init", layer_run, "--freeze-backbone", "--rule", "bp",
                        "--optimizer", "adam", "--lr-head", "1e-2", "--weight-decay", "0",
                        "--epochs", "2", "--batch-size", "50", "--device", "cpu",
                        "--out", head_run)
    assert code == 0, out
    head = load_checkpoint(head_run / "best.pt")["model"]
    assert torch.equal(head["backbone.net.currents.weight"], kept)  # the layer stayed fixed
    cfg = (head_run / "config.yaml").read_text()
    assert "hidden: 30" in cfg  # the kh layer's options came with --init
    metrics = json.loads((head_run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3  # far above chance (0.1) after two epochs

    code, out = _invoke("train", "--rule", "krotov", "--backbone", "kh", "--adv-train", "fgsm",
                        "--out", tmp_path / "bad")
    assert code != 0 and "unsupervised" in out and "Traceback" not in out


@pytest.mark.parametrize("kind", ["krotov", "specreg"])
def test_ctrl_c_and_resume_give_the_uninterrupted_weights(tmp_path, kind, one_thread):
    """The spectral basis (refreshed from the whole training split after every epoch) and
    the unsupervised stage's finish (pruning) both survive a Ctrl-C mid-epoch."""
    from helpers import CtrlCAt

    from retrieval_bio.config import RunConfig
    from retrieval_bio.train import train_run

    if kind == "krotov":
        kw = dict(rule="krotov", backbone="kh", optimizer="sgd", momentum=0.0,
                  lr_backbone=0.05, schedule="linear",
                  learner_options={"prune_threshold": 0.1})
    else:
        kw = dict(rule="bp", backbone="shlp", lr_backbone=1e-3, lr_head=1e-3,
                  model_options={"spectral_penalty": 1.0})
    opts = {"grey": True, "hidden": 12, **kw.pop("model_options", {})}

    def cfg(name):
        return RunConfig(stage="train", dataset="digits", image_size=8, epochs=3,
                         batch_size=100, weight_decay=0.0, device="cpu", model_options=opts,
                         out=str(tmp_path / name), **kw)

    ref = train_run(cfg("ref"))
    with pytest.raises(KeyboardInterrupt):  # 10 steps per epoch: mid second epoch
        train_run(cfg("run"), step_hooks=[CtrlCAt(15)])
    res = train_run(cfg("run"), resume=True)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k
    if kind == "specreg":
        assert bool(res.model.backbone.net.spectral.fitted)
    else:
        assert res.metrics["pruning"] == ref.metrics["pruning"]


def test_init_weights_of_another_shape_are_a_clear_error(tmp_path):
    from retrieval_bio.config import RunConfig
    from retrieval_bio.runs import RunFolderError
    from retrieval_bio.train.pipeline import build_model, load_splits

    model = _kh(hidden=6, image_size=8).float()
    torch.save({"model": model.state_dict()}, tmp_path / "w.pt")
    cfg = RunConfig(backbone="kh", image_size=8, init=str(tmp_path / "w.pt"),
                    model_options={"hidden": 5, "grey": True})
    with pytest.raises(RunFolderError, match=r"size mismatch.*--model-opt"):
        build_model(cfg, load_splits(cfg))
