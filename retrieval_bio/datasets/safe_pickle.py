"""A restricted unpickler for the CIFAR python pickles.

A pickle is a small program: every global it names is imported and may be called while it
loads, so ``pickle.load`` on a downloaded file runs whatever the file asks for
(``os.system``, ``builtins.eval``, ...). The CIFAR-10 / CIFAR-100 python pickles hold only
dicts, lists, strings, bytes, numbers and numpy arrays, which need no globals at all except
numpy's array reconstruction helpers. :class:`RestrictedUnpickler` resolves exactly those
(under each name that numpy 1.x, numpy 2.x and Python 2 write) and refuses every other global
before it is imported, so a hostile file fails with :class:`~.errors.DatasetError` and runs
nothing.

Globals allowed, by the name written in the file:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``: an ndarray pickled with protocols 0-4 (the original
  Python-2 files are protocol 2 and name the ``numpy.core`` spelling);
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``: an ndarray pickled
  with protocol 5;
* ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar``: a numpy number (e.g. a
  label list built with ``list(array)``);
* ``_codecs.encode`` with encoding latin-1 only, and ``builtins.bytes`` / ``__builtin__.bytes``
  called with no argument: how Python 3 writes ``bytes`` objects (non-empty / empty) with
  protocols 0-2, e.g. the buffer of a numpy array or bytes dict keys.

Everything else (including other numpy functions: ``numpy.load`` or
``numpy.testing._private.utils.runstring`` would load or run code too) is refused.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DatasetError

_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global (``module.name``) outside the allow-list, or calls an allowed
    one with arguments a genuine file never uses."""

    def __init__(self, module: str, name: str, detail: str = "") -> None:
        self.module, self.name, self.detail = module, name, detail
        super().__init__(f"refused global {module}.{name}{detail}")


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles of ``bytes`` call it: ``(str, 'latin1')``.

    Any other codec is refused: codecs are looked up (and their modules imported) by name.
    """
    if not isinstance(obj, str) or encoding.lower() not in _LATIN1 or errors != "strict":
        raise RefusedGlobal("_codecs", "encode", f" called with ({type(obj).__name__}, "
                            f"{encoding!r}, {errors!r}) where only (str, 'latin1') is allowed")
    return obj.encode("latin-1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol 0-2 pickles of ``b""`` call it; ``bytes(n)`` would allocate n."""
    if args:
        raise RefusedGlobal("builtins", "bytes", " called with arguments where only bytes() "
                            "is allowed")
    return b""


def _numpy(submodule: str, name: str) -> Callable[[], Any]:
    """A resolver of numpy's ``<submodule>.<name>``: ``numpy._core`` (numpy 2) else
    ``numpy.core`` (numpy 1.x), so either spelling in a file maps to the installed function
    without importing the deprecated alias."""

    def resolve() -> Any:
        for package in ("numpy._core", "numpy.core"):
            try:
                return getattr(importlib.import_module(f"{package}.{submodule}"), name)
            except (ImportError, AttributeError):
                continue
        raise RefusedGlobal(f"numpy.core.{submodule}", name, " (not found in this numpy)")

    return resolve


def _numpy_top(name: str) -> Callable[[], Any]:
    def resolve() -> Any:
        import numpy

        return getattr(numpy, name)

    return resolve


_RECONSTRUCT = _numpy("multiarray", "_reconstruct")
_SCALAR = _numpy("multiarray", "scalar")
_FROMBUFFER = _numpy("numeric", "_frombuffer")

#: ``(module, name)`` as written in the file -> resolver of the object to use.
ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): _numpy_top("ndarray"),
    ("numpy", "dtype"): _numpy_top("dtype"),
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("builtins", "bytes"): lambda: _empty_bytes,
    ("__builtin__", "bytes"): lambda: _empty_bytes,  # the Python-2 name protocols 0-2 write
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :data:`ALLOWED`.

    Every global of a pickle (``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` / extension-registry
    opcodes alike) is resolved through :meth:`find_class`, so a refused name is never
    imported, let alone called. Persistent ids are refused by ``pickle.Unpickler`` itself.
    """

    def find_class(self, module: str, name: str) -> Any:
        resolve = ALLOWED.get((module, name))
        if resolve is None:
            raise RefusedGlobal(module, name)
        return resolve()


def load_restricted(path: str | Path, what: str = "CIFAR pickle") -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="latin1"``, as the
    Python-2 CIFAR files need: their ``str`` objects are byte strings).

    Args:
        path: the pickle file.
        what: what the file should be, for messages (e.g. ``"CIFAR pickle"``).

    Raises:
        DatasetError: naming the file, when it names a refused global (with ``module.name``;
            nothing was imported or run), or is truncated or otherwise unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise DatasetError(
            f"{path} is not a genuine {what}: it asks for the global '{e.module}.{e.name}'"
            f"{e.detail}; refused, nothing in it was run (a {what} holds only dicts, lists, "
            f"strings, bytes, numbers and numpy arrays)"
        ) from None
    except Exception as e:  # truncated, empty, or not a pickle: name the file
        raise DatasetError(
            f"cannot unpickle {path} (truncated, or not a {what}): {type(e).__name__}: {e}"
        ) from e
