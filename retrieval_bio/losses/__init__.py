"""Training objectives: HyP² for hashing (SPEC §4); cross-entropy and MSE through the softmax
(PEPITA's BP baseline) for classification.

``create_loss(name, num_classes=..., bits=...)`` is the single entry point; ``LOSSES.names()``
lists them. Every loss is called ``loss(outputs, labels) -> scalar`` with multi-hot labels
and offers ``param_groups(head_lr)`` for its own parameters (HyP²'s proxies).
"""

from __future__ import annotations

import torch.nn as nn

from .codetable import ceil_log2, hyp2_threshold, load_codetable
from .cross_entropy import MultiHotCrossEntropy
from .hyp2 import DEFAULT_PROXY_LR_MULT, HyP2Loss
from .mse_softmax import MSESoftmaxLoss
from .registry import LOSSES


def create_loss(
    name: str, *, num_classes: int, bits: int | None = None, **kwargs: object
) -> nn.Module:
    """Build registered loss ``name`` (``"hyp2"``, ``"cross-entropy"``, ``"mse-softmax"``).

    Args:
        name: a registered loss (``LOSSES.names()``).
        num_classes: C.
        bits: K, code length; required by ``"hyp2"``, ignored by the classification losses.
        kwargs: passed to the loss (e.g. ``beta``, ``threshold``, ``proxy_lr_mult``, ``seed``).
    """
    return LOSSES.get(name)(num_classes=num_classes, bits=bits, **kwargs)


__all__ = [
    "DEFAULT_PROXY_LR_MULT", "HyP2Loss", "LOSSES", "MSESoftmaxLoss", "MultiHotCrossEntropy",
    "ceil_log2", "create_loss", "hyp2_threshold", "load_codetable",
]
