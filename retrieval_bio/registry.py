"""A tiny name -> constructor registry, in the spirit of timm's ``register_model``.

Every family of pluggable parts (backbones, datasets, rules, attacks) keeps one
``Registry``; the CLI takes its choices and ``--help`` text from it, so adding a part
is adding one decorated function in one file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps user-facing names (``"frsf"``, ``"vgg16"``, ``"sdha"``) to objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict[str, object]] = {}

    def register(self, name: str, help: str = "", **meta: object) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", help, **meta)``; ``meta`` holds facts
        callers read instead of branching on names (e.g. ``task="classify"``)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._help[name] = doc
            self._meta[name] = dict(meta)
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern`` (like ``timm.list_models``)."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def meta(self, name: str) -> dict[str, object]:
        """The metadata ``name`` was registered with (a copy; unknown name: KeyError)."""
        self.get(name)
        return dict(self._meta.get(name, {}))

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def registries() -> dict[str, Registry]:
    """Every registry of the toolkit by the plural name the CLI's ``list`` takes."""
    from .attacks import ATTACKS
    from .datasets import DATASETS
    from .index import INDEX_KINDS
    from .learners import LEARNERS
    from .losses import LOSSES
    from .models import BACKBONES, FRONTENDS
    from .rules import RULE_REGISTRY
    from .train.optim import OPTIMIZERS, SCHEDULES

    return {"backbones": BACKBONES, "frontends": FRONTENDS, "rules": RULE_REGISTRY,
            "datasets": DATASETS, "learners": LEARNERS, "losses": LOSSES, "attacks": ATTACKS,
            "indexes": INDEX_KINDS,
            "optimizers": OPTIMIZERS, "schedules": SCHEDULES}
