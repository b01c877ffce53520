"""Task heads and the model that joins a backbone to one.

* ``classify``: a Linear layer to C logits (cross-entropy).
* ``hash``: a plain Linear layer to K bits, no tanh (HyP², SPEC §4); the code is
  ``sign(h)`` with sign(0) = +1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import Backbone

TASKS = ("classify", "hash")


class TaskModel(nn.Module):
    """``head(backbone(x))``: images ``(N, 3, H, W)`` in [0, 1] -> ``(N, out_features)``.

    For ``task="classify"`` the output is C logits, for ``task="hash"`` the continuous
    pre-binarisation code h of K bits (take :meth:`codes` for ±1 codes).
    """

    def __init__(self, backbone: Backbone, task: str, out_features: int):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.task = task
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, out_features, bias=backbone.head_bias)
        if backbone.head_init is not None:
            backbone.head_init(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """int8 ±1 codes ``(N, K)``: sign of the head output with sign(0) = +1."""
        return binarize(self(x))


def binarize(h: torch.Tensor) -> torch.Tensor:
    """sign(h) as int8 in {-1, +1}, with sign(0) = +1 (SPEC §1)."""
    return torch.where(h >= 0, 1, -1).to(torch.int8)
