"""Our APGD against a maintained implementation: ART's ``AutoProjectedGradientDescent``
(adversarial-robustness-toolbox, the ``dev`` extra), same model, images, ε, norm, loss,
iterations and restarts: the same robust accuracy within noise.

The model is a small CNN trained here on scikit-learn's digits (3×8×8 images in [0, 1]), so
the check does not depend on the toolkit's model zoo.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval_bio.attacks import APGD

art = pytest.importorskip("art", reason="the reference check needs the dev extra "
                          "(pip install -e '.[dev]': adversarial-robustness-toolbox)")
from art.attacks.evasion import AutoProjectedGradientDescent  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

N_ITER = 100
# Tolerance on |accuracy(ours) − accuracy(ART)| over 300 images. Both attacks are randomised
# (random start from different generators) and differ in details the paper leaves open
# (docs/attacks.md: ART counts condition 1 on rises of the best loss, not of the loss; it
# keeps only the final iterate, we keep any misclassified iterate; it restarts momentum from
# the predecessor of the best point). Measured here, the seed-to-seed spread of either
# implementation is up to 0.017 (5 images) and the two agreed within 0.013; 0.03 (9 images)
# allows that spread on both sides. A broken attack misses by far more: the clean accuracy is
# above 0.9 and every checked ε brings it down by at least 0.1 (asserted below).
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def setup():
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1400], perm[1400:1700]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    np_state = np.random.get_state()
    yield model, x[test], y[test]
    np.random.set_state(np_state)  # ART draws its random starts from numpy's global RNG
    torch.set_num_threads(threads)


class SummedCE(nn.modules.loss._Loss):
    """Cross-entropy summed over the batch (ART's ``compute_loss`` sets ``reduction``).

    ART's L2 step is g / (‖g‖₂ + 1e-7) with g the gradient of its batch-*mean* loss: for a
    confidently classified image in a batch of 300 that gradient's norm can be 1e-11 to
    1e-8, so the "unit" step shrinks by orders of magnitude and ART stalls on images a
    budget can still break. Measured on this network trained 30 epochs instead of 15 (more
    confident; 55 % of the images' gradients below 1e-7): ART with its own CE left 0.13
    robust accuracy at L2 ε = 1.5 where ours, and ART with this loss, left 0.04; with the
    15 epochs used here the two happen to coincide. The per-image sum makes each image's
    gradient independent of the batch, as in our APGD and the reference implementation,
    without changing what is maximised. L∞ steps take the sign, which no scale affects.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, reduction=self.reduction)


def accuracy(model: nn.Module, adv, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(torch.as_tensor(adv)).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("norm,loss,eps_list", [
    ("linf", "ce", (0.08, 0.15)),
    ("l2", "ce", (0.75, 1.5)),
    ("linf", "dlr", (0.1,)),
    ("l2", "dlr", (1.0,)),
])
def test_apgd_matches_art(setup, norm, loss, eps_list):
    model, x, y = setup
    clean = accuracy(model, x, y)
    assert clean > 0.9
    summed = loss == "ce" and norm == "l2"
    classifier = PyTorchClassifier(
        model=model, loss=SummedCE(reduction="sum") if summed else nn.CrossEntropyLoss(),
        input_shape=(3, 8, 8), nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    for eps in eps_list:
        ours = accuracy(model, APGD(model, eps, norm=norm, loss=loss, n_iter=N_ITER,
                                    n_restarts=1, seed=0)(x, y), y)
        np.random.seed(0)
        reference = AutoProjectedGradientDescent(
            classifier, norm=np.inf if norm == "linf" else 2, eps=eps,
            eps_step=2 * eps,  # the paper's initial step (ART's default is a fixed 0.1)
            max_iter=N_ITER, nb_random_init=1, batch_size=len(x), verbose=False,
            loss_type=None if summed else
            {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}[loss])
        theirs = accuracy(model, reference.generate(x.numpy(), y.numpy()), y)
        assert ours < clean - 0.1 and theirs < clean - 0.1  # the attacks do bite
        assert abs(ours - theirs) <= TOLERANCE, (norm, loss, eps, ours, theirs)
