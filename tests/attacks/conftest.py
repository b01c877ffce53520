"""Quickly trained digits models (small-cnn, 8 px, the native size) shared by the attack tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import torch_threads

from retrieval_bio.datasets import load
from retrieval_bio.models import create_model

BITS = 16


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def train(model: torch.nn.Module, images, loss_fn, epochs: int, seed: int = 0) -> None:
    """Plain Adam training in full-batch-shuffled mini-batches of 64."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=g).split(64):
            opt.zero_grad()
            loss_fn(model(images[idx]), idx).backward()
            opt.step()
    model.eval()


def brute_force_map(q_codes, db_codes, q_labels, db_labels) -> float:
    """mAP over the whole database, ties broken by database position (a test-side oracle)."""
    q = q_codes.double()
    db = db_codes.double()
    dist = 0.5 * (q.shape[1] - q @ db.T)
    rel = (q_labels.double() @ db_labels.double().T) > 0
    aps = []
    for i in range(q.shape[0]):
        order = torch.sort(dist[i], stable=True).indices
        r = rel[i, order].double()
        if r.sum() == 0:
            aps.append(0.0)
            continue
        hits = torch.cumsum(r, 0)
        ranks = torch.arange(1, len(r) + 1, dtype=torch.float64)
        aps.append(float((hits / ranks * r).sum() / r.sum()))
    return sum(aps) / len(aps)


@pytest.fixture(scope="session")
def digits():
    return load("digits", image_size=8, seed=0)


@pytest.fixture(scope="session")
def hash_model(digits):
    """small-cnn hash model trained to map each class onto a fixed random ±1 codeword."""
    torch.manual_seed(0)
    model = create_model("small-cnn", "hash", bits=BITS)
    g = torch.Generator().manual_seed(1)
    codewords = torch.randint(0, 2, (10, BITS), generator=g).float()  # {0, 1} targets
    x, y = digits.train.images, digits.train.labels.argmax(1)

    def loss_fn(h, idx):
        return F.binary_cross_entropy_with_logits(h, codewords[y[idx]])

    with torch_threads(1):
        train(model, x, loss_fn, epochs=4)
    return model


@pytest.fixture(scope="session")
def classifier(digits):
    torch.manual_seed(0)
    model = create_model("small-cnn", "classify", num_classes=10)
    x, y = digits.train.images, digits.train.labels.argmax(1)
    with torch_threads(1):
        train(model, x, lambda out, idx: F.cross_entropy(out, y[idx]), epochs=4)
    return model


@pytest.fixture(scope="session")
def brute_map():
    """:func:`brute_force_map` as a fixture (no ``import conftest``, which can clash with
    other test folders' conftest modules)."""
    return brute_force_map
