"""Per-layer alignment diagnostics of a learning rule (SPEC §2, "Diagnostics").

Both functions return plain ``{layer name: angle in degrees}`` dicts, for the trainer to
log once per epoch. Angles are computed in float64; an angle involving a zero vector is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .convert import converted_layers, exact_gradients, feedback


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().reshape(-1).double()
    b = b.detach().reshape(-1).double()
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if denom.item() == 0.0:
        return math.nan
    cos = (torch.dot(a, b) / denom).clamp(-1.0, 1.0)
    return math.degrees(math.acos(cos.item()))


def layer_angles(model: nn.Module) -> dict[str, float]:
    """Angle between vec(B) and vec(W) for every ``nn.Linear`` / ``nn.Conv2d`` of ``model``.

    0 for BP (and for any layer left unconverted); ~90 for FA at the start of fine-tuning;
    below 90 for the sign rules (sign(W) is positively correlated with W).
    """
    return {name: _angle(feedback(m), m.weight) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def gradient_angles(model: nn.Module, loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
                    batch: Sequence[Any]) -> dict[str, float]:
    """Angle between the rule's gradient w.r.t. each converted layer's input and the exact one.

    One batch, two backward passes through the same forward computation: the model's own
    (rule) and under :func:`exact_gradients`. The angle at a layer measures how far the error
    signal reaching that layer's input has drifted from the true gradient, accumulated over
    all layers above it. Parameter ``.grad`` fields, BatchNorm running statistics and the
    global RNG are left as they were; dropout draws the same mask in both passes.

    Args:
        model: a converted model (a BP model returns an empty dict), in the mode the caller
            wants (train or eval).
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar``, e.g. ``nn.CrossEntropyLoss()``.
        batch: ``(inputs, targets, ...)`` already on the model's device; inputs are images in
            [0, 1] of shape ``(N, 3, H, W)``.

    Returns:
        ``{layer name: degrees}`` for converted layers whose input carries a gradient (the
        first layer's input, the image, does not unless it requires grad).
    """
    layers = converted_layers(model)
    if not layers:
        return {}
    inputs, targets = batch[0], batch[1]
    grads = {}
    saved = {n: b.detach().clone() for n, b in _non_feedback_buffers(model)}
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(inputs.device) if devices else None
        for mode in ("rule", "exact"):
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, inputs.device)
            if mode == "exact":
                with exact_gradients(model):
                    grads[mode] = _input_grads(model, layers, loss_fn, inputs, targets)
            else:
                grads[mode] = _input_grads(model, layers, loss_fn, inputs, targets)
    with torch.no_grad():
        buffers = dict(model.named_buffers())
        for name, value in saved.items():
            buffers[name].copy_(value)
    return {name: _angle(grads["rule"][name], grads["exact"][name])
            for name in grads["rule"] if name in grads["exact"]}


def _non_feedback_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    skip = {id(b) for layer in converted_layers(model).values() for b in layer.buffers()}
    return [(n, b) for n, b in model.named_buffers() if id(b) not in skip]


def _input_grads(model: nn.Module, layers: dict[str, nn.Module], loss_fn: Callable,
                 inputs: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if x.requires_grad:
                captured[name] = x
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n)) for n, layer in layers.items()]
    try:
        with torch.enable_grad():
            loss = loss_fn(model(inputs), targets)
            names = list(captured)
            grads = torch.autograd.grad(loss, [captured[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {n: g for n, g in zip(names, grads, strict=True) if g is not None}
