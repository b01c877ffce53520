"""Models: backbones (normalisation inside) and task heads.

``create_backbone(name, weights)`` and ``create_model(backbone, task, ...)`` are the
entry points, as ``timm.create_model`` is for timm.
"""

from __future__ import annotations

import os

from .backbones import (
    BACKBONES,
    Backbone,
    BackboneOptionError,
    Normalize,
    WeightsNotFoundError,
    backbone_names,
    backbone_options,
    create_backbone,
)
from .heads import TASKS, TaskModel, binarize
from .mlp import MLP, SharedDropout, shared_masks


def create_model(
    backbone: str, task: str = "classify", *, num_classes: int = 10, bits: int = 32,
    weights: str | os.PathLike | None = None, **options: object,
) -> TaskModel:
    """Backbone ``backbone`` plus a new ``task`` head.

    Args:
        backbone: see :func:`create_backbone`.
        task: ``"classify"`` (``num_classes`` logits) or ``"hash"`` (``bits`` outputs).
        weights: backbone weights, see :func:`create_backbone`.
        options: backbone options (``image_size``, and e.g. ``mlp``'s ``hidden``), see
            :func:`create_backbone`.
    """
    out = num_classes if task == "classify" else bits
    return TaskModel(create_backbone(backbone, weights, **options), task, out)


__all__ = [
    "BACKBONES", "MLP", "Backbone", "BackboneOptionError", "Normalize", "SharedDropout",
    "TASKS", "TaskModel", "WeightsNotFoundError",
    "backbone_names", "backbone_options", "binarize", "create_backbone", "create_model",
    "shared_masks",
]
