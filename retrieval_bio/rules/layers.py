"""Linear and Conv2d layers whose backward sends the input gradient through a feedback B.

Forward is the ordinary ``F.linear`` / ``F.conv2d``. Backward (SPEC §2):

* weight and bias gradients are exact: ``dW = g^T x`` (Linear) or the conv weight gradient,
  ``db = sum(g)``;
* the input gradient uses B instead of W: ``dx = g @ B`` (Linear) or
  ``conv2d_input(x.shape, B, g, ...)`` (Conv2d).

A conv's input and weight gradients come from one fused ``aten.convolution_backward`` call
with B passed as its "weight": the weight gradient does not read the weight, so this costs
exactly what BP's backward costs. B = s * B~ is built without autograd history into a reused
buffer, at most once per weight version (several backward passes through unchanged weights,
as in an attack with ``grad="model"``, reuse it). The scalar s is applied to whichever of B and
dx is smaller, so building B costs one or two elementwise passes over W plus two norms.

Layers are made by swapping the class of an existing ``nn.Linear`` / ``nn.Conv2d`` in place
(see :func:`retrieval_bio.rules.convert`), so parameters, their names and any optimiser that
already holds them are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .specs import RULE_REGISTRY, SCALES, RuleSpec

# brSF draw t of a layer is a pure function of the persistent (layer seed, t) pair, so a
# resumed run redraws the same M as an uninterrupted one (on the same device).
_DRAW_STRIDE = 1_000_003
_ONE = torch.tensor(1.0)
FEEDBACK_BUFFERS = ("R", "M", "M_state")  # state-dict names of a converted layer's buffers
_SEED_MASK = (1 << 63) - 1


def _draw(shape: torch.Size, seed: int, dtype: torch.dtype, device: torch.device,
          normal: bool) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed & _SEED_MASK)
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=gen, dtype=dtype, device=device)


class FeedbackLayer(nn.Module):
    """Mixin holding a converted layer's rule, its random parts and the cached B.

    Buffers (registered only for the rules that need them):

    * ``R`` (FA, persistent): the fixed random matrix, N(0, 1).
    * ``M`` (frSF persistent; brSF non-persistent): magnitudes, U[0, 1].
    * ``M_state`` (brSF, persistent int64 ``[seed, draws]``): M is a function of it.

    Loading a state dict that lacks these keys (a BP checkpoint) keeps the layer's own
    values and does not report them missing, so ``load_state_dict(bp_state)`` works strictly.
    """

    rule: str
    scale: str
    exact: bool

    def _init_feedback(self, rule: str, scale: str, seed: int) -> None:
        spec = RULE_REGISTRY.get(rule)
        self.rule = rule
        self.scale = scale
        self.exact = False
        self._scratch: torch.Tensor | None = None  # reused storage for B~ or s*B~
        self._fb_buf: torch.Tensor | None = None  # B~ (scratch or R) or s*B~ once folded
        self._fb_scale: torch.Tensor | float | None = None  # pending s, None once applied
        self._fb_key: tuple | None = None
        self._aux_norm_cache: tuple[tuple, torch.Tensor] | None = None
        w = self.weight
        if spec.random:
            r = _draw(w.shape, seed, w.dtype, torch.device("cpu"), normal=True)
            self.register_buffer("R", r.to(w.device).contiguous(
                memory_format=_memory_format(w)))
        if spec.magnitude == "fixed":
            m = _draw(w.shape, seed, w.dtype, torch.device("cpu"), normal=False)
            self.register_buffer("M", m.to(w.device).contiguous(
                memory_format=_memory_format(w)))
        elif spec.magnitude == "batch":
            self.register_buffer("M_state", torch.tensor([seed, 0], dtype=torch.int64))
            self.register_buffer("M", torch.empty_like(w.detach()), persistent=False)
            self._m_state = (seed, 0)
            self._redraw_magnitude()

    @property
    def spec(self) -> RuleSpec:
        return RULE_REGISTRY.get(self.rule)

    # -- brSF ------------------------------------------------------------------------------
    def _redraw_magnitude(self) -> None:
        seed, t = self._m_state
        m = self.M
        if m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64) \
                and m.is_contiguous():
            # numpy's SFC64 fills float32 about 2x faster than torch's CPU mt19937, and the
            # redraw of every weight is most of brSF's cost on CPU.
            rng = np.random.Generator(np.random.SFC64([seed & _SEED_MASK, t]))
            rng.random(out=m.numpy().reshape(-1), dtype=m.numpy().dtype)
            self._fb_key = None  # written behind autograd's back: drop the cached B
            return
        gen = torch.Generator(device=m.device)
        gen.manual_seed((seed * _DRAW_STRIDE + t) & _SEED_MASK)
        with torch.no_grad():
            m.uniform_(0.0, 1.0, generator=gen)

    def on_optimizer_step(self) -> None:
        """After a parameter update: forget the cached B; brSF also draws a new M.

        The cache is keyed on W's autograd version counter, which ordinary optimisers bump;
        this call also covers updates that do not (fused optimisers, writes via ``.data``).
        """
        self._fb_key = None
        if self.spec.magnitude != "batch":
            return
        seed, t = self._m_state
        self._m_state = (seed, t + 1)
        with torch.no_grad():
            self.M_state[1].fill_(t + 1)
        self._redraw_magnitude()

    # -- state dict --------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: Any,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        # A BP checkpoint has no feedback buffers: keep this layer's own, silently.
        for name in FEEDBACK_BUFFERS:
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)
        if prefix + "M_state" in state_dict and hasattr(self, "_m_state"):
            seed, t = (int(v) for v in self.M_state.tolist())
            self._m_state = (seed, t)
            self._redraw_magnitude()
        self._fb_key = None

    # -- building B -------------------------------------------------------------------------
    def _aux(self) -> torch.Tensor | None:
        spec = self.spec
        if spec.random:
            return self.R
        if spec.magnitude is not None:
            return self.M
        return None

    def _feedback_parts(self) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """``(buf, s)`` with B = s * buf (s None: B = buf). No autograd history."""
        w = self.weight
        aux = self._aux()
        key = (w._version, w.data_ptr(), w.dtype, w.device,
               None if aux is None else (aux._version, aux.data_ptr()))
        if key == self._fb_key:
            return self._fb_buf, self._fb_scale
        spec = self.spec
        wd = w.detach()
        with torch.no_grad():
            if spec.random:
                buf = self.R  # used as is; copied only if s must be folded in (_fold_scale)
                tilde_norm = self._aux_norm(self.R)
            else:
                # sign(W) as W's sign bit (copysign): one pass over W, and no zero entries,
                # so ||sign(W)|| = sqrt(numel) and ||M o sign(W)|| = ||M|| need no pass.
                # This is the toolkit's sign(0) = +1 (SPEC §1) for +0.0; -0.0 gives -1.
                buf = self._scratch_like(wd)
                if spec.magnitude is not None:
                    torch.copysign(self.M, wd, out=buf)
                    tilde_norm = self._aux_norm(self.M)
                else:
                    torch.copysign(_ONE.to(wd.dtype), wd, out=buf)
                    tilde_norm = torch.tensor(math.sqrt(wd.numel()), dtype=wd.dtype,
                                              device=wd.device)
            s: torch.Tensor | float | None
            if self.scale == "none":
                s = None
            elif self.scale == "init":
                s = init_scale(wd, spec)
            else:  # "norm": ||s B~||_F = ||W||_F at this step
                w_norm = torch.linalg.vector_norm(wd)
                s = w_norm / tilde_norm.clamp_min(torch.finfo(tilde_norm.dtype).tiny)
        self._fb_buf, self._fb_scale, self._fb_key = buf, s, key
        return buf, s

    def _aux_norm(self, aux: torch.Tensor) -> torch.Tensor:
        """||R|| or ||M||, cached until the buffer changes (brSF: every redraw)."""
        key = (aux._version, aux.data_ptr(), aux.dtype, self._m_draw())
        if self._aux_norm_cache is None or self._aux_norm_cache[0] != key:
            self._aux_norm_cache = (key, torch.linalg.vector_norm(aux.detach()))
        return self._aux_norm_cache[1]

    def _m_draw(self) -> int:
        # the CPU redraw writes M through numpy, behind autograd's version counter
        return self._m_state[1] if hasattr(self, "_m_state") else 0

    def _scratch_like(self, w: torch.Tensor) -> torch.Tensor:
        """The layer's reused buffer for B, (re)allocated only when W's layout changes."""
        buf = self._scratch
        if (buf is None or buf.shape != w.shape or buf.dtype != w.dtype
                or buf.device != w.device):
            buf = torch.empty_like(w)
            self._scratch = buf
        return buf

    def _fold_scale(self) -> torch.Tensor:
        """Multiply the pending s into B once (the result is cached), returning B."""
        buf, s = self._feedback_parts()
        if s is None:
            return buf
        with torch.no_grad():
            if self.spec.random:  # never scale R itself: write s*R into the scratch buffer
                out = self._scratch_like(self.R)
                torch.mul(self.R, s, out=out)
                buf = out
            else:
                buf.mul_(s)
        self._fb_buf, self._fb_scale = buf, None
        return buf

    def _feedback_for(self, dx_numel: int) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """B for a backward whose input gradient has ``dx_numel`` entries: returns
        ``(B_or_buf, s_to_apply_to_dx)``, folding s into B when B is the smaller tensor."""
        buf, s = self._feedback_parts()
        if s is not None and buf.numel() <= dx_numel:
            return self._fold_scale(), None
        return buf, s

    def feedback_matrix(self) -> torch.Tensor:
        """The B the next backward will use (a new tensor, no autograd history)."""
        if self.exact:
            return self.weight.detach().clone()
        buf, s = self._feedback_parts()
        return buf.clone() if s is None else buf * s

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}, scale={self.scale}"


def init_scale(weight: torch.Tensor, spec: RuleSpec) -> float:
    """s of ``scale="init"``: the constant that gives B BioTorch's magnitude (xavier init).

    With a = sqrt(6 / (fan_in + fan_out)) the bound of ``xavier_uniform_`` (gain 1) and
    σ = a / sqrt(3) = sqrt(2 / (fan_in + fan_out)) its std, fan-in/fan-out as in
    ``torch.nn.init._calculate_fan_in_and_fan_out`` (a conv's include its receptive field),
    BioTorch (``biotorch/layers/fa_constructor``) builds

    * FA: B = a fixed ``xavier_uniform_`` draw, U[−a, a] (std σ). Here s = σ, so s·R with
      R ~ N(0, 1) has the same std and E||B||_F² = n·σ² (normal, not uniform, entries);
    * uSF: B = σ·sign(W). Here s = σ: identical;
    * frSF: B = |fixed xavier draw|∘sign(W); brSF: |fresh xavier draw|∘sign(W), i.e. a·U[0, 1]
      magnitudes. Here s = a, so s·M with M ~ U[0, 1] has BioTorch's distribution.
    """
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    numerator = 6.0 if spec.magnitude is not None else 2.0  # a for magnitudes M, else σ
    return math.sqrt(numerator / (fan_in + fan_out))


def _memory_format(w: torch.Tensor) -> torch.memory_format:
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) \
            and not w.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _apply_scale(dx: torch.Tensor, s: torch.Tensor | float | None) -> torch.Tensor:
    if s is None:
        return dx
    if isinstance(s, torch.Tensor):
        s = s.to(dx.dtype)
    return dx.mul_(s)


class _LinearFn(torch.autograd.Function):
    """``F.linear`` forward; backward ``dx = g @ B``, exact ``dW``, ``db``.

    Mixed precision: ``torch.amp.custom_fwd/custom_bwd`` fix the device type at decoration,
    but a layer may run on CPU or CUDA, so the same is done by hand: forward runs under the
    caller's autocast state (F.linear casts as in BP) and backward casts x, B and W to the
    gradient's dtype explicitly, with autocast off, and returns gradients in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # noqa: ANN001
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: ANN001
        x, weight = ctx.saved_tensors
        layer: FeedbackLayer = ctx.layer
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = dw = db = None
        with torch.autocast(g.device.type, enabled=False):
            cd = g.dtype
            if need_x:
                b_mat, s = layer._feedback_for(x.numel())
                dx = _apply_scale(g.matmul(b_mat.to(cd)), s).to(x.dtype)
            if need_w or (need_b and ctx.has_bias):
                g2 = g.reshape(-1, g.shape[-1])
                if need_w:
                    dw = g2.t().mm(x.reshape(-1, x.shape[-1]).to(cd)).to(weight.dtype)
                if need_b and ctx.has_bias:
                    db = g2.sum(0).to(weight.dtype)
        return dx, dw, db, None


class _Conv2dFn(torch.autograd.Function):
    """``F.conv2d`` forward; backward from one ``aten.convolution_backward`` call with B.

    Mixed precision handled as in :class:`_LinearFn`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layer, stride, padding, dilation, groups):  # noqa: ANN001
        ctx.layer = layer
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: ANN001
        x, weight = ctx.saved_tensors
        layer: FeedbackLayer = ctx.layer
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        s = None
        with torch.autocast(g.device.type, enabled=False):
            cd = g.dtype
            if need_x:
                kernel, s = layer._feedback_for(x.numel())
            else:
                kernel = weight.detach()  # only its shape is read
            dx, dw, db = torch.ops.aten.convolution_backward(
                g, x.to(cd), kernel.to(cd), [weight.shape[0]] if need_b else None,
                list(stride), list(padding), list(dilation), False, [0, 0], groups,
                [need_x, need_w, need_b])
        if need_x:
            dx = _apply_scale(dx, s).to(x.dtype)
        if need_w:
            dw = dw.to(weight.dtype)
        if need_b:
            db = db.to(weight.dtype)
        return dx, dw, db, None, None, None, None, None


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` with a rule's feedback B in its backward (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact or not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return _LinearFn.apply(x, self.weight, self.bias, self)


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    """``nn.Conv2d`` (any stride, padding, dilation, groups, padding mode) with feedback B."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact or not torch.is_grad_enabled():
            return nn.Conv2d.forward(self, x)
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            # Non-zero padding modes and "same" (possibly asymmetric): pad explicitly, with
            # exact gradients through the pad, then convolve without padding.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        return _Conv2dFn.apply(x, self.weight, self.bias, self, self.stride, padding,
                               self.dilation, self.groups)


_CLASS_CACHE: dict[type, type] = {}


def feedback_class(cls: type) -> type | None:
    """The converted class for layer type ``cls``, or None if it cannot be converted.

    Exact ``nn.Linear`` / ``nn.Conv2d`` and subclasses that keep their parent's forward
    (e.g. torch's ``NonDynamicallyQuantizableLinear``) convert; subclasses with their own
    forward (timm's ``Conv2dSame``, ``StdConv2d``) do not, since their forward is not F.conv2d.
    """
    if cls in (nn.Linear, nn.Conv2d):
        return FeedbackLinear if cls is nn.Linear else FeedbackConv2d
    if issubclass(cls, FeedbackLayer):
        return None
    if issubclass(cls, nn.Linear) and cls.forward is nn.Linear.forward:
        base = FeedbackLinear
    elif (issubclass(cls, nn.Conv2d) and cls.forward is nn.Conv2d.forward
          and cls._conv_forward is nn.Conv2d._conv_forward):
        base = FeedbackConv2d
    else:
        return None
    if cls not in _CLASS_CACHE:
        _CLASS_CACHE[cls] = type(f"Feedback{cls.__name__}", (base, cls), {})
    return _CLASS_CACHE[cls]


__all__ = ["FEEDBACK_BUFFERS", "SCALES", "FeedbackConv2d", "FeedbackLayer", "FeedbackLinear",
           "feedback_class", "init_scale"]
