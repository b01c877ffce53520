"""The bundled digits dataset: its protocol's split sizes, and what it says of a root."""

from __future__ import annotations

import logging

import pytest
import torch

from retrieval_bio import datasets
from retrieval_bio.datasets import DatasetError


def _labels(split) -> torch.Tensor:
    return torch.stack([split[i][1] for i in range(len(split))])


def test_protocol_sizes_and_class_balance():
    s = datasets.load("digits", image_size=8, seed=0)
    per_class = {"train": 100, "validation": 20, "query": 20}
    for name, n in per_class.items():
        counts = _labels(getattr(s, name)).sum(0)
        assert counts.tolist() == [n] * 10, name
    # the database: every item that is neither query nor validation (train included)
    assert len(s.database) == 1797 - 200 - 200
    x = s.query[0][0]
    assert x.shape == (3, 8, 8) and 0 <= x.min() and x.max() <= 1


def test_a_root_is_not_read_and_the_warning_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="retrieval_bio.datasets.digits"):
        datasets.load("digits", "/data/cifar10", image_size=8)
    assert "root /data/cifar10 is not used" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retrieval_bio.datasets.digits"):
        datasets.load("digits", image_size=8)
    assert caplog.text == ""


def test_another_protocol_is_an_error():
    with pytest.raises(DatasetError, match="one protocol, 'digits'"):
        datasets.load("digits", protocol="cifar10-1")
