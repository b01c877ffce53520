"""The shared base of every attack: model mode, device, gradient source, L∞ projection,
seeding and call counting (torchattacks-style: each attack file holds only its algorithm).

Conventions (SPEC §1, §2, §7, §8):

* images are float tensors ``(N, 3, H, W)`` with pixels in [0, 1]; the model normalises
  internally, so ε is measured in [0, 1] pixel units (L∞);
* after every step the adversarial batch is projected onto the L∞ ball of radius ε around
  the clean batch and clamped to [0, 1];
* ``grad="exact"`` differentiates through the forward weights W (the attacker knows W;
  ``retrieval_bio.rules.exact_gradients``); ``grad="model"`` uses the model's own backward
  (its feedback matrices B for a converted model). For an unconverted (BP) model the two are
  the same computation;
* gradients are taken with ``torch.autograd.grad`` with respect to the input only, so model
  parameters never accumulate ``.grad`` and no weight gradients are computed;
* random choices (random starts, Square's squares) come from a ``torch.Generator`` seeded with
  ``seed`` at every call, so a call is deterministic and the global RNG is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from ..losses.cross_entropy import class_indices  # noqa: F401  (the attacks' public name)
from ..progress import Progress, ensure
from ..registry import Registry

GRAD_SOURCES = ("exact", "model")

#: name -> attack class; the CLI's ``attack`` choices come from here.
ATTACKS: Registry[type[Attack]] = Registry("attack")


class Attack:
    """Base class: call ``attack(images, labels) -> adversarial images``.

    Args:
        model: maps images ``(N, 3, H, W)`` in [0, 1] to outputs ``(N, D)`` (logits or the
            continuous hash output h).
        eps: L∞ budget ε in [0, 1] pixel units (ε = 0 returns the input unchanged).
        grad: ``"exact"`` (through W) or ``"model"`` (the model's own feedback path).
        seed: seeds the attack's private ``torch.Generator`` at every call.

    Attributes:
        n_grad_calls: forward+backward passes (input-gradient evaluations) made so far.
        n_forward_calls: model forward passes made so far (including those of gradient calls).
    """

    name = "attack"

    def __init__(
        self, model: nn.Module, eps: float, *, grad: str = "exact", seed: int = 0
    ) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if grad not in GRAD_SOURCES:
            raise ValueError(f"grad must be one of {GRAD_SOURCES}, got {grad!r}")
        self.model = model
        self.eps = float(eps)
        self.grad = grad
        self.seed = int(seed)
        self.n_grad_calls = 0
        self.n_forward_calls = 0

    # -- public ------------------------------------------------------------------------

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Adversarial images ``(N, 3, H, W)`` in [0, 1] within ε (L∞) of ``images``.

        Args:
            images: clean images ``(N, 3, H, W)`` in [0, 1].
            labels: ``(N, C)`` multi-hot or ``(N,)`` class ids; unused by HAG.
            progress: optional progress object; advanced once per attack step.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("images must have pixel values in [0, 1]")
        x = images.detach().to(self.device)
        if labels is not None:
            labels = labels.detach().to(self.device)
        progress = ensure(progress)
        with eval_mode(self.model):
            gen = torch.Generator(device=x.device).manual_seed(self.seed)
            adv = self.forward(x, labels, gen, progress)
        # A final projection guards every subclass's result (a no-op when already in budget).
        return self.project(adv.detach(), x)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        """The attack's algorithm; ``images`` are on ``self.device`` and detached."""
        raise NotImplementedError

    def reset_counters(self) -> None:
        self.n_grad_calls = 0
        self.n_forward_calls = 0

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        if p is None:
            b = next(self.model.buffers(), None)
            return b.device if b is not None else torch.device("cpu")
        return p.device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, grad={self.grad!r}, seed={self.seed})"

    # -- helpers for subclasses ----------------------------------------------------------

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Project onto the L∞ ε-ball around ``images``, then clamp to [0, 1]."""
        adv = torch.minimum(torch.maximum(adv, images - self.eps), images + self.eps)
        return adv.clamp(0.0, 1.0)

    def gradient_source(self) -> contextlib.AbstractContextManager:
        """Context under which forward *and* backward run: exact (through W) or the model's."""
        return gradient_mode(self.model, self.grad)

    def input_grad(
        self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward + one backward: ``(loss, d loss / d x)`` for ``loss_fn(model(x), x)``.

        The gradient is taken w.r.t. ``x`` only (``torch.autograd.grad``), through the
        chosen gradient source. Returns the detached scalar loss and the gradient (x's shape).
        """
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), self.gradient_source(), _frozen(self.model):
            out = self.model(x)
            loss = loss_fn(out, x)
            (g,) = torch.autograd.grad(loss, x)
        self.n_forward_calls += 1
        self.n_grad_calls += 1
        return loss.detach(), g

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Model output for ``x`` without gradients (counted as a forward call)."""
        self.n_forward_calls += 1
        return self.model(x)



@contextlib.contextmanager
def gradient_mode(model: nn.Module, source: str) -> Iterator[None]:
    """Forward and backward of ``model`` under gradient source ``source`` for the duration.

    ``"exact"`` makes every feedback layer back-propagate through W
    (:func:`retrieval_bio.rules.exact_gradients`); ``"model"`` leaves the model's own
    backward. Any submodule with a ``gradient_mode(source)`` context manager is entered too:
    that is how a model whose forward is a computation an attacker cannot differentiate as is
    (an energy-based net's relaxation, :class:`retrieval_bio.models.ep.EPConvNet`) says what
    each source differentiates.
    """
    if source not in GRAD_SOURCES:
        raise ValueError(f"grad must be one of {GRAD_SOURCES}, got {source!r}")
    with contextlib.ExitStack() as stack:
        if source == "exact":
            # Imported lazily: rules is a sibling subpackage attacks must not need at import.
            from ..rules import exact_gradients

            stack.enter_context(exact_gradients(model))
        for m in model.modules():
            hook = getattr(m, "gradient_mode", None)
            if callable(hook):
                stack.enter_context(hook(source))
        yield


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running stats, no dropout) for the duration, as during an
    attack; every module's own mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def resolve_preset(
    presets: dict[str, dict[str, Any]], preset: str | None, default: str = "paper",
    **given: Any,
) -> dict[str, Any]:
    """Fill the arguments left as ``None`` from ``presets[preset]`` (``presets[default]`` when
    ``preset`` is None); explicit values always win."""
    values = dict(given)
    name = default if preset is None else preset
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    for k, v in presets[name].items():
        if values.get(k) is None:
            values[k] = v
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"give {', '.join(missing)} or a preset ({sorted(presets)})")
    return values


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters with ``requires_grad=False`` for one attack step: custom backward passes
    (the learning rules' layers) then skip weight gradients nobody asked for."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
