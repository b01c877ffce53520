"""Learning rules for fine-tuning: BP, FA, uSF, frSF, brSF (SPEC §2, seed 001 §3.1).

A converted ``nn.Linear`` / ``nn.Conv2d`` computes the ordinary forward pass; in the backward
its weight and bias gradients are exact and its input gradient goes through a feedback
matrix B of W's shape instead of W:

======  ====================================  =========================================
rule    B                                     when B changes
======  ====================================  =========================================
bp      W                                     (ordinary autograd)
fa      s * R, R ~ N(0, 1) fixed (seeded)     never (s follows ||W|| under "norm")
usf     s * sign(W)                           every step (current W)
frsf    s * M * sign(W), M ~ U[0, 1] fixed    sign part every step, M never
brsf    s * M * sign(W), M ~ U[0, 1]          M redrawn after every optimiser step
======  ====================================  =========================================

Usage (the trainer's part)::

    from retrieval_bio import rules

    model = create_model("vgg16", "classify", num_classes=10, weights=bp_run)
    rules.convert(model, "frsf", scale="norm", seed=cfg.seed)   # in place; returns model
    opt = torch.optim.Adam(model.parameters(), ...)             # before or after convert
    rules.attach(opt, model)      # every rule: brSF redraws M after each opt.step()
    ...
    per_epoch_log = {"angle_BW": rules.layer_angles(model),
                     "angle_grad": rules.gradient_angles(model, nn.CrossEntropyLoss(),
                                                         (x, y))}

Instead of :func:`attach`, a loop may call ``rules.on_optimizer_step(model)`` right after
each ``optimizer.step()``; do one or the other, not both (twice would skip a brSF draw).
It is required for brSF and for any rule whose optimiser is fused (``Adam(fused=True)``
does not bump autograd's version counter, on which the cached B is keyed).

Attacks: ``with rules.exact_gradients(model): ...`` (forward and backward inside) makes every
converted layer back-propagate through W, the gradient an attacker who has the weights uses
(``grad="exact"``); outside it the model's own feedback path is used (``grad="model"``).

Scale (``scale=``): ``"norm"`` (default) rescales B at every step so ||B||_F = ||W||_F,
which keeps the backward signal at BP's magnitude; the literal formulas (``"none"``) inflate it
by ~1/|w| per layer (~100x for pretrained weights), so deep nets overflow. ``"init"``
reproduces BioTorch's feedback magnitude: s = sqrt(2/(fan_in+fan_out)) (the std of a Xavier
init) for FA and uSF, sqrt(6/(fan_in+fan_out)) for frSF/brSF, whose s*M then matches
BioTorch's |Xavier-uniform| draws (see docs/rules.md).

State dicts: parameter names are unchanged (``weight``, ``bias``). Converted layers add
buffers: ``R`` (fa), ``M`` (frsf), ``M_state = [seed, draws]`` (brsf; its M is redrawn from it).

* A BP state dict loads into a converted model with ``strict=True``: missing feedback
  buffers are not reported and the layer keeps the ones drawn at conversion.
* A converted model's state dict loads into a converted model of the same rule exactly
  (the saved M / R win over the new model's seed): convert first, then load.
* Loading it into an unconverted model needs ``strict=False`` (the extra keys are unexpected).

Nothing is added to ``parameters()``; B is rebuilt without autograd history into a reused
buffer at most once per weight update. Mixed precision (``torch.autocast``) works on CPU and
CUDA. Random parts are drawn on the CPU from ``seed + layer index`` (device independent);
brSF redraws on the layer's device.
"""

from .convert import (
    attach,
    convert,
    converted_layers,
    exact_gradients,
    feedback,
    on_optimizer_step,
    rule_of,
)
from .diagnostics import gradient_angles, layer_angles
from .layers import FEEDBACK_BUFFERS, FeedbackConv2d, FeedbackLayer, FeedbackLinear
from .specs import RULE_REGISTRY, RULES, SCALES, RuleSpec, has_feedback_path

__all__ = [
    "FEEDBACK_BUFFERS", "RULES", "RULE_REGISTRY", "SCALES", "FeedbackConv2d", "FeedbackLayer",
    "FeedbackLinear",
    "RuleSpec", "attach", "convert", "converted_layers", "exact_gradients", "feedback",
    "gradient_angles", "has_feedback_path", "layer_angles", "on_optimizer_step", "rule_of",
]
