"""Models: backbones (normalisation inside) and task heads.

``create_backbone(name, weights)`` and ``create_model(backbone, task, ...)`` are the
entry points, as ``timm.create_model`` is for timm.
"""

from __future__ import annotations

import os

from . import hah, krotov  # noqa: F401  (register the hah-*, kh and shlp backbones)
from .backbones import (
    BACKBONES,
    Backbone,
    BackboneOptionError,
    Normalize,
    WeightsNotFoundError,
    adapt_input,
    backbone_names,
    backbone_options,
    create_backbone,
)
from .frontends import FRONTENDS, create_frontend
from .heads import TASKS, TaskModel, binarize
from .mlp import MLP, SharedDropout, shared_masks


def create_model(
    backbone: str, task: str = "classify", *, num_classes: int = 10, bits: int = 32,
    weights: str | os.PathLike | None = None, frontend: str | None = None,
    frontend_options: dict[str, object] | None = None, **options: object,
) -> TaskModel:
    """Backbone ``backbone`` plus a new ``task`` head, behind an optional front end.

    Args:
        backbone: see :func:`create_backbone`.
        task: ``"classify"`` (``num_classes`` logits) or ``"hash"`` (``bits`` outputs).
        weights: backbone weights, see :func:`create_backbone`.
        frontend: a name of :data:`FRONTENDS` (``None`` or ``"none"``: no front end). One
            whose output is not an image (``normalized_output``) makes the backbone take its
            ``out_channels`` without mean/std normalisation (:func:`adapt_input`).
        frontend_options: the front end's options.
        options: backbone options (``image_size``, and e.g. ``mlp``'s ``hidden``), see
            :func:`create_backbone`.

    Raises:
        ValueError: a bad front-end option, or a backbone whose input cannot be adapted.
    """
    out = num_classes if task == "classify" else bits
    net = create_backbone(backbone, weights, **options)
    front = None
    if frontend not in (None, "none"):
        front = create_frontend(frontend, **(frontend_options or {}))
        if getattr(front, "normalized_output", False):
            adapt_input(net, front.out_channels)
    elif frontend_options:
        raise ValueError(f"frontend_options {sorted(frontend_options)} given without a "
                         f"front end; set frontend")
    return TaskModel(net, task, out, frontend=front)


__all__ = [
    "BACKBONES", "FRONTENDS", "MLP", "TASKS", "Backbone", "BackboneOptionError", "Normalize",
    "SharedDropout", "TaskModel", "WeightsNotFoundError", "adapt_input", "backbone_names",
    "backbone_options", "binarize", "create_backbone", "create_frontend", "create_model",
    "shared_masks",
]
