"""Loss registry: an entry is ``fn(*, num_classes, bits, **kw) -> nn.Module``.

Every registered loss module is called as ``loss(outputs, labels) -> scalar`` with ``outputs``
the head output ``(N, out)`` and ``labels`` multi-hot ``(N, C)``, and has
``param_groups(head_lr) -> list[dict]`` for any parameters of its own (empty if none).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..registry import Registry

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
