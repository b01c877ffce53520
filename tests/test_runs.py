"""Run-folder files: permissions follow the umask, damaged files are named with the fix,
and a missing best.pt is never silently replaced by the last checkpoint."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from retrieval_bio.runs import (
    RunFolderError,
    atomic_torch_save,
    atomic_write_json,
    read_json,
    run_weights,
    update_metrics,
    weights_info,
)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "c.pt")
        with open(tmp_path / "plain.txt", "w") as f:  # the oracle: what open() gives
            f.write("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~mask
    for name in ("m.json", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want


def test_damaged_metrics_is_named_and_never_overwritten(tmp_path):
    bad = '{"history": [1, 2,\n  oops}'
    (tmp_path / "metrics.json").write_text(bad)
    with pytest.raises(RunFolderError, match=r"metrics\.json is not valid JSON .*line 2"):
        read_json(tmp_path / "metrics.json")
    with pytest.raises(RunFolderError):
        update_metrics(tmp_path, x=1)
    assert (tmp_path / "metrics.json").read_text() == bad  # the history is not lost
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="JSON object"):
        read_json(tmp_path / "metrics.json")
    assert read_json(tmp_path / "missing.json") == {}


def test_run_weights_best_last_and_file(tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint exists either"):
        run_weights(tmp_path, "best")
    atomic_torch_save({"model": {}, "epoch": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunFolderError, match=r"no best\.pt.*--weights last.*epoch 3"):
        run_weights(tmp_path, "best")
    assert run_weights(tmp_path, "last") == tmp_path / "checkpoint.pt"
    assert run_weights(tmp_path, str(tmp_path / "checkpoint.pt")) == tmp_path / "checkpoint.pt"
    with pytest.raises(RunFolderError, match="does not exist"):
        run_weights(tmp_path, str(tmp_path / "nope.pt"))
    info = weights_info(tmp_path / "checkpoint.pt", {"epoch": 3})
    import hashlib

    assert info == {"file": "checkpoint.pt", "epoch": 3,
                    "sha256": hashlib.sha256((tmp_path / "checkpoint.pt").read_bytes())
                    .hexdigest()}
