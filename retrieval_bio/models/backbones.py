"""Backbones: torchvision AlexNet / VGG-16 / ResNet-18, any timm model, a small CNN.

Every backbone takes images in [0, 1] and starts with :class:`Normalize` (SPEC §1), so
attacks and ε budgets live in pixel space. ``create_backbone`` returns a
:class:`Backbone` whose ``forward`` maps ``(N, 3, H, W)`` to features ``(N, num_features)``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry
from .ep import EP_PRESETS, ConvPoolNet, EPConvNet
from .mlp import MLP, he_uniform_

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on disk (nothing is downloaded at run time)."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, after upsampling inputs smaller than ``min_size``.

    The upsampling lets ImageNet architectures whose pooling chain needs a minimum input
    (AlexNet: 63 px) run on CIFAR-size images with their pretrained weights unchanged.
    It is differentiable, so attacks see it as part of the model.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], min_size: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.min_size and min(x.shape[-2:]) < self.min_size:
            x = F.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear",
                              align_corners=False)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}"


class Backbone(nn.Module):
    """A feature extractor: ``normalize`` then ``net``; images in [0, 1] -> ``(N, F)``.

    ``head_init`` / ``head_bias``: how a task head on this backbone is built (the MLP of
    seed 000 wants a He-uniform head, optionally without bias); ``None`` keeps
    ``nn.Linear``'s default init."""

    def __init__(self, name: str, net: nn.Module, num_features: int, normalize: Normalize,
                 head_init: Callable[[nn.Linear], None] | None = None,
                 head_bias: bool = True):
        super().__init__()
        self.name = name
        self.normalize = normalize
        self.net = net
        self.num_features = num_features
        self.head_init = head_init
        self.head_bias = head_bias
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x)).flatten(1)

    def freeze(self) -> Backbone:
        """Fix every weight (``requires_grad=False``) and every BatchNorm statistic: a frozen
        backbone stays in eval mode whatever ``train()`` asks (a linear probe, the head
        stage of a ``kh`` run)."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> Backbone:
        return super().train(mode and not self.frozen)

    @property
    def representation_layer(self) -> str | None:
        """The module (name under this backbone) whose output representation diagnostics
        read by default, when the net names one (the ``kh`` currents h); ``None``: the
        features the head sees."""
        inner = getattr(self.net, "representation_layer", None)
        return None if inner is None else f"net.{inner}"


@dataclass
class BackboneSpec:
    """What a registered constructor returns before weights are handled."""

    net: nn.Module
    num_features: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    min_size: int = 0
    head_keys: tuple[str, ...] = ()  # state-dict prefixes of the dropped ImageNet classifier
    head_init: Callable[[nn.Linear], None] | None = None  # how the task head starts
    head_bias: bool = True


BACKBONES: Registry[Callable[[str | None], BackboneSpec]] = Registry("backbone")


def _torchvision_cache_file(weights_enum) -> Path:
    url = weights_enum.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_torchvision_imagenet(net: nn.Module, weights_enum) -> None:
    path = _torchvision_cache_file(weights_enum)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights for this backbone are not in the local torch cache: expected "
            f"{path}. Download {weights_enum.url} on a machine with internet and copy it there "
            f"(or set TORCH_HOME), or pass weights=<path to a state dict>."
        )
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _torchvision(builder: str, enum_name: str, strip: Callable[[nn.Module], tuple[int, str]],
                 min_size: int = 0) -> Callable[[str | None], BackboneSpec]:
    def make(weights: str | None) -> BackboneSpec:
        import torchvision.models as tvm

        net = getattr(tvm, builder)(weights=None)
        if weights == "imagenet":
            _load_torchvision_imagenet(net, getattr(tvm, enum_name).IMAGENET1K_V1)
        num_features, head_key = strip(net)
        return BackboneSpec(net, num_features, min_size=min_size, head_keys=(head_key,))

    make.__doc__ = f"torchvision {builder} (ImageNet-1k weights: {enum_name}.IMAGENET1K_V1)"
    return make


def _strip_classifier_last(net: nn.Module) -> tuple[int, str]:
    last = len(net.classifier) - 1
    n = net.classifier[last].in_features
    net.classifier[last] = nn.Identity()
    return n, f"classifier.{last}."


def _strip_fc(net: nn.Module) -> tuple[int, str]:
    n = net.fc.in_features
    net.fc = nn.Identity()
    return n, "fc."


# AlexNet's pooling chain needs >= 63 px; smaller inputs are upsampled to 64 inside Normalize.
BACKBONES.register("alexnet")(
    _torchvision("alexnet", "AlexNet_Weights", _strip_classifier_last, min_size=64))
BACKBONES.register("vgg16")(_torchvision("vgg16", "VGG16_Weights", _strip_classifier_last))
BACKBONES.register("resnet18")(_torchvision("resnet18", "ResNet18_Weights", _strip_fc))


@BACKBONES.register("small-cnn")
def small_cnn(weights: str | None) -> BackboneSpec:
    """A 4-layer CNN (32-64-128-128 channels, ~0.3 M parameters) for demos and fast tests."""
    if weights == "imagenet":
        raise WeightsNotFoundError("small-cnn has no ImageNet weights; pretrain it instead")

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    net = nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 128, 2),
                        *block(128, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return BackboneSpec(net, 128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@BACKBONES.register("polar-cnn")
def polar_cnn(weights: str | None, *, image_size: int = 28, hidden: int = 100) -> BackboneSpec:
    """The classifier behind seed 004's polarizing front end (the authors' code): conv 5x5
    to 32, max-pool 2, ReLU, conv 5x5 to 64, max-pool 2, ReLU, linear to ``hidden``, ReLU
    (28 px: 4·4·64 = 1024 features into the linear layer)."""
    if weights == "imagenet":
        raise WeightsNotFoundError("polar-cnn has no ImageNet weights; train it instead")
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"polar-cnn needs images of at least 16 px, got {image_size}")
    net = nn.Sequential(nn.Conv2d(3, 32, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
                        nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
                        nn.Flatten(), nn.Linear(64 * side * side, hidden), nn.ReLU(inplace=True))
    # no normalisation: the seed's classifier takes the front end's z in [-1, 1] as it is
    return BackboneSpec(net, hidden, mean=(0.0,) * 3, std=(1.0,) * 3)


@BACKBONES.register("mlp")
def mlp(weights: str | None, *, image_size: int = 28, hidden: Sequence[int] = (1024,),
        dropout: float = 0.1, bias: bool = True, output_bias: bool = True,
        grey: bool = False) -> BackboneSpec:
    """Fully connected net of seed 000 (PEPITA): flatten, 1x1024 ReLU, dropout 0.1, He init."""
    if weights == "imagenet":
        raise WeightsNotFoundError("mlp has no ImageNet weights; train it instead")
    channels = 1 if grey else 3
    net = MLP(channels * image_size * image_size, hidden, dropout=dropout, bias=bias, grey=grey)
    # no mean/std normalisation: PEPITA's input is the raw [0, 1] image (seed 000 §3.1)
    return BackboneSpec(net, net.linears[-1].out_features, mean=(0.0,) * 3, std=(1.0,) * 3,
                        head_init=he_uniform_, head_bias=output_bias)


def _ep_backbone(preset: str) -> Callable[..., BackboneSpec]:
    p = EP_PRESETS[preset]

    def make(weights: str | None, *, image_size: int = p["image_size"],
             channels: Sequence[int] = p["channels"], paddings: Sequence[int] = p["paddings"],
             pools: Sequence[bool] = p["pools"], t_free: int = p["t_free"],
             t_nudge: int = p["t_nudge"], t_eval: int = p["t_eval"],
             t_attack: int = p["t_attack"], beta: float = p["beta"]) -> BackboneSpec:
        if weights == "imagenet":
            raise WeightsNotFoundError(f"ep-{preset} has no ImageNet weights; train it instead")
        net = EPConvNet(3, channels, paddings, pools, image_size=image_size, t_free=t_free,
                        t_nudge=t_nudge, t_eval=t_eval, t_attack=t_attack, beta=beta)
        return BackboneSpec(net, net.num_features, mean=p["mean"], std=p["std"])

    make.__doc__ = (f"Equilibrium-Propagation ConvNet, seed 002's {preset} preset "
                    f"(retrieval_bio.models.ep); train it with rule 'ep'")
    return make


def _convpool_backbone(preset: str) -> Callable[..., BackboneSpec]:
    p = EP_PRESETS[preset]

    def make(weights: str | None, *, image_size: int = p["image_size"],
             channels: Sequence[int] = p["channels"], paddings: Sequence[int] = p["paddings"],
             pools: Sequence[bool] = p["pools"]) -> BackboneSpec:
        if weights == "imagenet":
            raise WeightsNotFoundError(f"cnn-{preset} has no ImageNet weights; train it instead")
        # the EP net's state shapes are the feature-map shapes of this net too
        shapes = EPConvNet(3, channels, paddings, pools, image_size=image_size).shapes
        c, h, w = shapes[-1]
        return BackboneSpec(ConvPoolNet(3, channels, paddings, pools), c * h * w,
                            mean=p["mean"], std=p["std"])

    make.__doc__ = (f"seed 002's BP-CNN baseline: the topology of ep-{preset} with BatchNorm "
                    f"and ReLU, trained by backprop")
    return make


for _preset in EP_PRESETS:
    BACKBONES.register(f"ep-{_preset}", own_gradient=True)(_ep_backbone(_preset))
    BACKBONES.register(f"cnn-{_preset}")(_convpool_backbone(_preset))


def has_own_gradient(backbone: str) -> bool:
    """Whether ``backbone``'s forward is a computation with an input-gradient estimate of its
    own (an EP net's relaxation: ``grad="model"`` is EP's estimate, ``grad="exact"``
    backprop through the unrolled dynamics), so the two gradient sources differ even when
    the rule has no feedback path."""
    return backbone in BACKBONES and bool(BACKBONES.meta(backbone).get("own_gradient"))


def _timm_spec(model_name: str, weights: str | None) -> BackboneSpec:
    import timm

    if weights == "imagenet":
        old = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            net = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as e:  # timm raises several types for "not in cache"
            raise WeightsNotFoundError(
                f"pretrained weights for timm model {model_name!r} are not in the local "
                f"Hugging Face / timm cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
                f". Fetch them once on a machine with internet "
                f"(timm.create_model({model_name!r}, pretrained=True)) and copy the cache, "
                f"or pass weights=<path to a state dict>. ({type(e).__name__}: {e})"
            ) from e
        finally:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old
    else:
        net = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = net.pretrained_cfg or {}
    return BackboneSpec(
        net, net.num_features, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )


def backbone_names() -> list[str]:
    """Registered backbone names; any ``timm:<name>`` is accepted too."""
    return BACKBONES.names() + ["timm:<name>"]


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a retrieval-bio checkpoint
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    if any(k.startswith("backbone.net.") for k in obj):  # a whole TaskModel
        obj = {k[len("backbone.net."):]: v for k, v in obj.items()
               if k.startswith("backbone.net.")}
    return obj


class BackboneOptionError(ValueError):
    """An option the backbone does not take (or a bad value of one); the message names it."""


def backbone_options(name: str) -> list[str]:
    """The options ``create_backbone(name, **options)`` takes (``image_size`` included)."""
    if name.startswith("timm:"):
        return []
    params = inspect.signature(BACKBONES.get(name)).parameters
    return [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]


def adapt_input(backbone: Backbone, channels: int) -> Backbone:
    """Make ``backbone`` take ``(N, channels, H, W)`` front-end outputs in place: its first
    Conv2d (or, for a flattening net, its first Linear) is rebuilt for ``channels`` inputs
    (freshly initialised: weights trained on RGB pixels do not fit), and its mean/std
    normalisation becomes the identity (the input is not an image).

    Raises:
        ValueError: the backbone has no such first layer, or computes its input's shape
            itself (an energy-based net).
    """
    if has_own_gradient(backbone.name):
        raise ValueError(f"backbone {backbone.name!r} builds its states from a 3-channel "
                         f"image; put a front end with image output (sparse-coding) in front "
                         f"of it, or use another backbone")
    # registration order is forward order for every registered net
    first = next(((n, m) for n, m in backbone.net.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is not None:
        name, old = first
        if isinstance(old, nn.Conv2d):
            new: nn.Module = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride,
                                       old.padding, old.dilation, old.groups,
                                       bias=old.bias is not None, padding_mode=old.padding_mode)
        elif old.in_features % 3 == 0 and not getattr(backbone.net, "grey", False):
            new = nn.Linear(old.in_features // 3 * channels, old.out_features,
                            bias=old.bias is not None)
        else:
            new = None
        if new is not None:
            parent = backbone.net.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], new.to(old.weight.device))
            backbone.normalize = Normalize((0.0,) * channels, (1.0,) * channels,
                                           backbone.normalize.min_size)
            return backbone
    raise ValueError(f"backbone {backbone.name!r} has no first Conv2d or Linear layer to "
                     f"take {channels} front-end channels")


def create_backbone(name: str, weights: str | os.PathLike | None = None,
                    **options: object) -> Backbone:
    """Build backbone ``name`` (``BACKBONES.names()`` or ``"timm:<model>"``).

    Args:
        name: ``"alexnet"``, ``"vgg16"``, ``"resnet18"``, ``"small-cnn"`` or ``"timm:<name>"``.
        weights: ``None`` (random init), ``"imagenet"`` (from the local torch / timm cache,
            never downloaded) or a path to a state dict: a torchvision/timm state dict of the
            whole architecture (its ImageNet classifier is ignored) or a retrieval-bio
            checkpoint.
        options: architecture options of backbones that take them (``mlp``: ``hidden``,
            ``dropout``, ``bias``, ``output_bias``, ``grey``); ``image_size`` is passed to
            those that need it and ignored by the others.

    Returns:
        A :class:`Backbone` mapping ``(N, 3, H, W)`` images in [0, 1] to ``(N, F)``.

    Raises:
        WeightsNotFoundError: ``weights`` names a file (or cache entry) that is not there.
        BackboneOptionError: an option this backbone does not take.
    """
    known = backbone_options(name)
    image_size = options.pop("image_size", None)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BackboneOptionError(
            f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(k for k in known if k != 'image_size') or 'none'}")
    if image_size is not None and "image_size" in known:
        options["image_size"] = image_size
    file = None
    if weights is not None and weights != "imagenet":
        file = Path(weights)
        if not file.is_file():
            raise WeightsNotFoundError(
                f"weights file {file} for backbone {name!r} does not exist; place a state dict "
                f"there (torch.save(model.state_dict(), '{file}')) or pass weights='imagenet' "
                f"to load from the local torch/timm cache."
            )
    if name.startswith("timm:"):
        spec = _timm_spec(name[5:], None if file else weights)
    else:
        try:
            spec = BACKBONES.get(name)(None if file else weights, **options)
        except (TypeError, ValueError) as e:
            if isinstance(e, WeightsNotFoundError) or not options:
                raise
            raise BackboneOptionError(f"backbone {name!r} with {options}: {e}") from e
    if file is not None:
        state = _state_dict_from_file(file)
        state = {k: v for k, v in state.items() if not k.startswith(spec.head_keys or ("\0",))}
        missing, unexpected = spec.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"weights file {file} does not fit backbone {name!r}: missing keys "
                f"{missing[:5]}, unexpected keys {unexpected[:5]}"
            )
    return Backbone(name, spec.net, spec.num_features,
                    Normalize(spec.mean, spec.std, spec.min_size), head_init=spec.head_init,
                    head_bias=spec.head_bias)
