"""Adversarial validation (``val_attack``) and ``select: adversarial`` in a whole run.

The oracle is FGSM written out here (one ε-step along the sign of the cross-entropy's input
gradient, clamped to [0, 1]) on the selected weights, not the toolkit's attack classes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from retrieval_bio.config import RunConfig
from retrieval_bio.runs import read_json
from retrieval_bio.train import load_run, train_run

EPS = 0.1


def _fgsm_accuracy(model: torch.nn.Module, dataset) -> float:
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([dataset[i][1] for i in range(len(dataset))]).argmax(1)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    adv = (x + EPS * g.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def test_adversarial_selection_keeps_the_epoch_of_best_robust_accuracy(tmp_path):
    cfg = RunConfig.from_dict(dict(
        stage="pretrain", task="classify", backbone="mlp", dataset="digits", image_size=8,
        batch_size=64, epochs=4, lr_backbone=3e-3, lr_head=3e-3, device="cpu", seed=1,
        num_workers=0, val_attack="fgsm", adv_eps=EPS, select="adversarial",
        out=str(tmp_path / "run")))
    history = train_run(cfg).metrics["history"]
    robust = [h["val_adv_accuracy"] for h in history]
    clean = [h["val_accuracy"] for h in history]
    assert all(r < c for r, c in zip(robust, clean, strict=True)), (robust, clean)
    best = int(np.argmax(robust))  # the first of equal maxima, as the trainer keeps it

    _, model, splits = load_run(tmp_path / "run")  # best.pt, in eval mode
    # one image of slack: the run attacks in batches of 128, this in one batch, and float
    # rounding may flip the sign of a near-zero gradient entry
    n = len(splits.validation)
    assert abs(_fgsm_accuracy(model, splits.validation) - robust[best]) <= 1 / n
    assert read_json(tmp_path / "run" / "metrics.json")["best_epoch"] == best + 1
