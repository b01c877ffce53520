"""Task heads and the model that joins a backbone to one.

* ``classify``: a Linear layer to C logits (cross-entropy).
* ``hash``: a plain Linear layer to K bits, no tanh (HyP², SPEC §4); the code is
  ``sign(h)`` with sign(0) = +1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import Backbone
from .frontends import log_mean_softmax

TASKS = ("classify", "hash")


class TaskModel(nn.Module):
    """``head(backbone(frontend(x)))``: images ``(N, 3, H, W)`` in [0, 1] ->
    ``(N, out_features)``.

    For ``task="classify"`` the output is C logits, for ``task="hash"`` the continuous
    pre-binarisation code h of K bits (take :meth:`codes` for ±1 codes).

    ``frontend`` (optional, :mod:`retrieval_bio.models.frontends`) runs first. A random front
    end with ``ensemble`` = E > 1 is evaluated, in eval mode, as the ensemble of E
    realisations (seed 004 §3): classification logits become log(mean_e softmax(z_e)), valid
    logits for cross-entropy and attacks; hash outputs become the mean h. Training forwards
    use one realisation.
    """

    def __init__(self, backbone: Backbone, task: str, out_features: int,
                 frontend: nn.Module | None = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.task = task
        self.frontend = frontend
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, out_features, bias=backbone.head_bias)
        if backbone.head_init is not None:
            backbone.head_init(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frontend is None:
            return self.head(self.backbone(x))
        e = int(getattr(self.frontend, "ensemble", 1))
        if self.training or e <= 1:
            return self.head(self.backbone(self.frontend(x)))
        out = self.head(self.backbone(self.frontend(x.repeat(e, 1, 1, 1))))
        out = out.view(e, x.shape[0], -1)
        if self.task == "hash":
            return out.mean(0)
        return log_mean_softmax(out.float())

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """int8 ±1 codes ``(N, K)``: sign of the head output with sign(0) = +1."""
        return binarize(self(x))


def binarize(h: torch.Tensor) -> torch.Tensor:
    """sign(h) as int8 in {-1, +1}, with sign(0) = +1 (SPEC §1)."""
    return torch.where(h >= 0, 1, -1).to(torch.int8)
