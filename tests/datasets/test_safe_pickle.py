"""The restricted unpickler of CIFAR pickles refuses hostile files before anything runs.

Each hostile file is a real pickle on disk whose loading with ``pickle.load`` would run a
command that creates a marker file; the tests check the error and that the marker is absent.
"""

import builtins
import os
import pickle
import re
import subprocess

import numpy as np
import pytest
from fixtures import py2_pickle, write_cifar10

from retrieval_bio.datasets import DatasetError, load
from retrieval_bio.datasets.safe_pickle import load_restricted


class _Call:
    """Pickles as ``fn(*args)``: what a hostile file makes ``pickle.load`` do."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    """``(object, pickle protocol, refused global as written in the file)``; each object,
    when unpickled with ``pickle.load``, creates ``marker``."""
    touch = f"open({str(marker)!r}, 'w').close()"
    inner = pickle.dumps(_Call(os.system, f"touch '{marker}'"), protocol=2)
    return {
        "os.system": (_Call(os.system, f"touch '{marker}'"), 2,
                      f"{os.system.__module__}.system"),  # posix.system on Linux
        "builtins.eval": (_Call(builtins.eval, touch), 4, "builtins.eval"),
        "__builtin__.eval": (_Call(builtins.eval, touch), 2, "__builtin__.eval"),
        # protocols < 3 write these under their Python-2 names (commands.Popen, pickle.loads)
        "subprocess.Popen": (_Call(subprocess.Popen, ["touch", str(marker)]), 4,
                             "subprocess.Popen"),
        # an unrestricted nested unpickle would undo the restriction
        "_pickle.loads": (_Call(pickle.loads, inner), 4, "_pickle.loads"),
    }


@pytest.mark.parametrize("which", ["os.system", "builtins.eval", "__builtin__.eval",
                                   "subprocess.Popen", "_pickle.loads"])
def test_hostile_cifar_batch_is_refused_and_runs_nothing(tmp_path, which):
    write_cifar10(tmp_path / "data", train_per_class=5, test_per_class=1)
    marker = tmp_path / "pwned"
    payload, protocol, name = _payloads(marker)[which]
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": payload, "labels": [0, 1]}, protocol=protocol))
    # The file is a working exploit: a plain pickle.load would run it (checked on a copy
    # whose marker lives elsewhere, so the assertion below stays meaningful).
    probe = tmp_path / "probe"
    probe_payload, _, _ = _payloads(probe)[which]
    ran = pickle.loads(pickle.dumps(probe_payload, protocol=protocol))
    if isinstance(ran, subprocess.Popen):
        ran.wait()  # Popen returns before the child has run
    assert probe.exists()

    with pytest.raises(DatasetError) as err:
        load("cifar10", str(tmp_path / "data"), counts={"query": 1, "validation": 1, "train": 1})
    msg = str(err.value)
    assert str(batch) in msg and f"'{name}'" in msg and "not a genuine CIFAR pickle" in msg
    assert not marker.exists()


def test_refused_before_import_and_for_numpy_gadgets(tmp_path):
    """Globals are refused by name, before their module is imported: also numpy's own
    functions beyond the array-reconstruction helpers."""
    for module, name in [("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
                         ("numpy.core.multiarray", "frombuffer"), ("os", "system"),
                         ("no_such_module_xyz", "f")]:
        path = tmp_path / "evil.pkl"
        path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"U\x01x\x85R.")
        refused = re.escape(f"evil.pkl is not a genuine CIFAR pickle: it asks for the global "
                            f"'{module}.{name}'; refused, nothing in it was run")
        with pytest.raises(DatasetError, match=refused):
            load_restricted(path)  # no_such_module_xyz: an import attempt would fail differently


def test_allowed_helpers_only_with_the_arguments_real_files_use(tmp_path):
    path = tmp_path / "codec.pkl"
    # _codecs.encode("x", "rot13"): a real file only ever asks for latin-1
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DatasetError, match=r"'_codecs\.encode' called with \(str, 'rot13'"):
        load_restricted(path)
    path.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")  # bytes(2**30)
    with pytest.raises(DatasetError, match=r"'builtins\.bytes' called with arguments"):
        load_restricted(path)


def test_genuine_contents_round_trip(tmp_path):
    """What the real files hold loads unchanged: numpy arrays under numpy 1 (Python 2) and
    numpy 2 names, byte and text strings, numbers, nested lists, dicts, numpy scalars."""
    data = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    obj = {"data": data, "labels": [3, 1, 4, 1], "name": "batch", b"raw": b"\x00\xff",
           "empty": b"", "f": 1.5, "big": 2**40, "neg": -7, "none": None, "flag": True,
           "nested": [[1, 2], ("a", 3)], "int64": np.array([5, 6], np.int64),
           "scalars": list(np.array([7, 8], np.int64)), "f32": np.ones((2, 2), np.float32)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        got = load_restricted(path)
        assert got.keys() == obj.keys()
        for k, v in obj.items():
            if isinstance(v, np.ndarray):
                assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
            else:
                assert got[k] == v, (protocol, k)
    path = tmp_path / "py2.pkl"
    path.write_bytes(py2_pickle({"data": data, "labels": [3, 1, 4, 1], "batch_label": "b 1"}))
    got = load_restricted(path)
    # Python-2 byte strings come back as str (latin-1), as with pickle.load(encoding="latin1")
    assert got.keys() == {"data", "labels", "batch_label"} and got["batch_label"] == "b 1"
    assert got["data"].dtype == np.uint8 and np.array_equal(got["data"], data)
