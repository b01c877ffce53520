"""Converting a model to a learning rule, and the controls a trainer or attack needs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from .layers import FeedbackLayer, feedback_class
from .specs import RULE_REGISTRY, SCALES

log = logging.getLogger(__name__)


def convert(model: nn.Module, rule: str, *, scale: str = "norm", seed: int = 0) -> nn.Module:
    """Switch every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` to ``rule``, in place.

    Each layer keeps its forward, its parameters (same objects, same names ``weight`` /
    ``bias``) and its hooks; only its backward changes (SPEC §2). An optimiser built before
    the conversion keeps working. Layer i (in ``named_modules`` order) draws its random parts
    from ``seed + i`` on the CPU, so they do not depend on the device.

    Args:
        model: any module (backbone and head are both converted; nothing is frozen). A
            submodule with ``keeps_exact_gradients = True`` (a structural front end) and its
            children are left as they are.
        rule: one of :data:`RULES`; ``"bp"`` returns ``model`` untouched.
        scale: ``"norm"`` (default): per layer, s makes ||B||_F = ||W||_F at every step, so the
            backward signal keeps BP's magnitude (the literal sign(W) of pretrained weights
            ~1e-2 inflates it ~100x per layer and a 16-layer net overflows).
            ``"none"``: the literal formula. ``"init"``: a constant per layer that gives B
            BioTorch's magnitude under its xavier init, from the layer's fan-in/fan-out
            (``torch.nn.init._calculate_fan_in_and_fan_out``, receptive field included for a
            conv): s = σ = sqrt(2/(fan_in+fan_out)), the xavier std, for FA and uSF, and
            s = a = sqrt(6/(fan_in+fan_out)), the xavier bound, for frSF and brSF (whose
            s·M, M ~ U[0, 1], is BioTorch's |U[−a, a]|). uSF equals BioTorch's B; FA matches
            its std but draws R from a normal, not a uniform (see
            :func:`~.layers.init_scale`).
        seed: base seed of R (FA) and M (frSF, brSF).

    Returns:
        ``model`` (for chaining).

    Raises:
        KeyError: unknown rule. ValueError: unknown scale, or the model is already converted.
    """
    spec = RULE_REGISTRY.get(rule)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    if spec.is_bp:
        return model
    if converted_layers(model):
        raise ValueError("model is already converted; convert a fresh (BP) copy instead")
    index = 0
    # a structural front end is a fixed part trained by backprop (seed 004); the rule
    # trains what is behind it
    exempt = [n + "." for n, m in model.named_modules()
              if getattr(m, "keeps_exact_gradients", False)]
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if any(name.startswith(prefix) for prefix in exempt):
            continue
        cls = feedback_class(type(module))
        if cls is None:
            log.warning("%s (%s) keeps exact gradients: its forward is not plain "
                        "F.linear/F.conv2d", name, type(module).__name__)
            continue
        if isinstance(module.weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"{name}: lazy layer not initialised; run one forward first")
        module.__class__ = cls
        module._init_feedback(rule, scale, seed + index)
        index += 1
    log.debug("converted %d layers to %s (scale=%s, seed=%d)", index, rule, scale, seed)
    return model


def converted_layers(model: nn.Module) -> dict[str, FeedbackLayer]:
    """Name -> converted layer, in ``named_modules`` order (empty for a BP model)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FeedbackLayer)}


def rule_of(model: nn.Module) -> str:
    """The rule a model was converted to (``"bp"`` if none)."""
    rules = {m.rule for m in converted_layers(model).values()}
    if len(rules) > 1:
        raise ValueError(f"model mixes rules {sorted(rules)}")
    return rules.pop() if rules else "bp"


def feedback(layer: nn.Module) -> torch.Tensor:
    """The B the layer's next backward uses for its input gradient (a new tensor, no history).

    For an unconverted ``nn.Linear`` / ``nn.Conv2d``, or a converted one inside
    :func:`exact_gradients`, that is W itself. Shape: the weight's shape.
    """
    if isinstance(layer, FeedbackLayer):
        return layer.feedback_matrix()
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        return layer.weight.detach().clone()
    raise TypeError(f"{type(layer).__name__} has no feedback matrix")


@contextmanager
def exact_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every converted layer back-propagates through W (exact gradients).

    This is what an attacker who knows the weights does (``grad="exact"``, SPEC §2). The
    graph is built at forward time, so run forward *and* backward inside the block. Nests:
    on exit each layer gets back the mode it had on entry.
    """
    layers = list(converted_layers(model).values())
    previous = [layer.exact for layer in layers]
    for layer in layers:
        layer.exact = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.exact = was


def on_optimizer_step(model: nn.Module) -> None:
    """Call after every ``optimizer.step()``, for every rule: brSF layers draw a new M.

    All layers also drop their cached B. B is cached per weight version (autograd's version
    counter, bumped by ordinary in-place optimiser updates); fused optimisers
    (``Adam(fused=True)``) and writes through ``.data`` do not bump it, so a loop that uses
    them must call this (or :func:`attach`) for uSF / frSF / FA to see the new W.

    Each draw t of a brSF layer is seeded from its persistent ``M_state = [seed, t]``, so a
    run resumed from a checkpoint redraws the same magnitudes as an uninterrupted one.
    """
    for layer in converted_layers(model).values():
        layer.on_optimizer_step()


def attach(optimizer: torch.optim.Optimizer, model: nn.Module):  # noqa: ANN201
    """Register :func:`on_optimizer_step` as a post-step hook of ``optimizer``.

    Call once after building the optimiser, whatever the rule (required for brSF, and for
    any rule with a fused optimiser). The hook runs only when the parameters really
    were updated (e.g. not when ``GradScaler`` skips a step on inf/NaN gradients).

    Returns:
        the hook handle (``handle.remove()`` detaches it).
    """
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: on_optimizer_step(model))
