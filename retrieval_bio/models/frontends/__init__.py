"""Structural front ends (seed 004 ch. 4): modules placed in front of any backbone and task
head, so that ``TaskModel = head(backbone(frontend(x)))`` and ε stays in [0, 1] pixels.

=================  ========================================================================
name               what it is
=================  ========================================================================
``polarizing``     ℓ1-normalised conv + ternary quantiser, three-stage training (§4.1)
``sparse-coding``  dictionary encoder (top-T, dropout, dead-zone quantiser) + decoder (§4.2)
=================  ========================================================================

``create_frontend(name, **options)`` builds one. A front end is an ``nn.Module`` with
``out_channels`` and ``normalized_output`` (its output is not an image, so the backbone
behind it drops its mean/std normalisation and its first layer takes ``out_channels``), and
may define the hooks the trainer calls (all optional):

* ``set_epoch(epoch)`` at the start of every epoch (staged training, freezing);
* ``is_selectable(epoch)``: whether the weights after that epoch may become the run's result;
* ``check_epochs(epochs)``: raise ``ValueError`` when the run is too short for its stages;
* ``auxiliary_loss()``: a term the autograd learner adds to the objective (regularisers,
  layer-local losses), from the last training forward;
* ``fit_data(images, seed)`` / ``is_fitted``: an unsupervised fit on training images before
  training (a dictionary).

Non-differentiable ops declare their backward (:mod:`.ops`); :func:`bpda` switches them for
an attack. A front end keeps exact gradients under the feedback rules (``keeps_exact_gradients``):
the rule trains the backbone and the head behind it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ...registry import Registry
from .ops import (
    BACKWARDS,
    BPDA_PRESETS,
    BPDAOp,
    CoeffDropout,
    Quantizer,
    TopT,
    bpda,
    bpda_ops,
    describe_bpda,
    has_bpda_ops,
    is_stochastic,
    reseed,
    resolve_bpda,
    top_mask,
)
from .polarizing import PolarizingFrontEnd
from .sparse import SparseCodingFrontEnd, log_mean_softmax

#: name -> front-end class; the ``frontend`` config key's choices
FRONTENDS: Registry[Callable[..., nn.Module]] = Registry("front end")
FRONTENDS.register("polarizing", help="ℓ1-normalised conv + ternary quantiser "
                   "(seed 004 §4.1); three training stages")(PolarizingFrontEnd)
FRONTENDS.register("sparse-coding", help="dictionary encoder (top-T, dropout, dead-zone "
                   "quantiser) + decoder (seed 004 §4.2); dictionary fit on training "
                   "patches")(SparseCodingFrontEnd)


def frontend_names() -> list[str]:
    return FRONTENDS.names()


def create_frontend(name: str, **options: object) -> nn.Module:
    """Front end ``name`` with ``options`` (its constructor's keyword arguments).

    Raises:
        KeyError: unknown name. ValueError: an option it does not take, or a bad value.
    """
    cls = FRONTENDS.get(name)
    try:
        module = cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"front end {name!r}: {e}") from e
    module.keeps_exact_gradients = True
    return module


__all__ = [
    "BACKWARDS", "BPDAOp", "BPDA_PRESETS", "CoeffDropout", "FRONTENDS", "PolarizingFrontEnd",
    "Quantizer", "SparseCodingFrontEnd", "TopT", "bpda", "bpda_ops", "create_frontend",
    "describe_bpda", "frontend_names", "has_bpda_ops", "is_stochastic", "log_mean_softmax",
    "reseed", "resolve_bpda", "top_mask",
]
