"""Corruption sweeps: accuracy per (corruption, severity) on a real tiny trained run, the
means, the JSON + PNG written into the run, reuse and continuation of cells, the official
arrays path (a fixture in the release's format), and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import PNG_SIGNATURE, copy_run

from retrieval_bio.config import ConfigError
from retrieval_bio.datasets.corruptions import CifarC, corrupt
from retrieval_bio.eval.corruption import corruption_sweep, report_rows
from retrieval_bio.models import create_model
from retrieval_bio.train import open_run
from retrieval_bio.workflows import corrupt_run

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["gaussian_noise", "contrast", "fog"]


def write_cifar_c(root, names=("gaussian_noise", "fog"), k=6, classes=10, seed=0):
    """The release's layout: ``<name>.npy`` (5k, 32, 32, 3) uint8 + ``labels.npy`` (5k,)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(rng.integers(0, classes, size=k), 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    arrays = {n: rng.integers(0, 256, size=(5 * k, 32, 32, 3), dtype=np.uint8) for n in names}
    for n, a in arrays.items():
        np.save(root / f"{n}.npy", a)
    return arrays, labels


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    return copy_run(tiny_run("classify", "bp"), tmp_path_factory.mktemp("corrupt") / "run")


@pytest.fixture(scope="module")
def loaded(run):
    return open_run(run, device="cpu")


def test_sweep_cells_match_an_independent_count(loaded):
    model, query = loaded.model, loaded.splits.query
    images = torch.stack([query[i][0] for i in range(30)])
    labels = torch.stack([query[i][1] for i in range(30)])
    rep = corruption_sweep(model, (images, labels), NAMES, [1, 5], seed=3, batch_size=7)
    assert rep["source"] == "generated" and rep["corruptions"] == NAMES  # CIFAR-C's order
    assert rep["severities"] == [1, 5] and rep["num_images"] == 30 and rep["complete"]
    with torch.no_grad():
        for name in NAMES:
            for i, s in enumerate((1, 5)):
                pred = model(corrupt(images, name, s, seed=3)).argmax(1)
                assert rep["accuracy"][name][i] == pytest.approx(
                    float((pred == labels.argmax(1)).float().mean()))
        clean = float((model(images).argmax(1) == labels.argmax(1)).float().mean())
    assert rep["clean_accuracy"] == pytest.approx(clean)
    cells = np.array([rep["accuracy"][n] for n in NAMES])
    assert rep["mean_by_severity"] == pytest.approx(cells.mean(0).tolist())
    assert rep["mean_by_corruption"]["fog"] == pytest.approx(cells[2].mean())
    assert rep["mean"] == pytest.approx(cells.mean())
    # the batch size does not change a cell (per-image noise streams)
    again = corruption_sweep(model, (images, labels), NAMES, [1, 5], seed=3, batch_size=30)
    assert again["accuracy"] == rep["accuracy"]
    header, rows = report_rows(rep)
    assert header == ["corruption", "sev 1", "sev 5", "mean"] and rows[-2][0] == "mean"


def test_sweep_reuses_previous_cells_and_fills_missing_ones(loaded):
    model, query = loaded.model, loaded.splits.query
    images = torch.stack([query[i][0] for i in range(20)])
    labels = torch.stack([query[i][1] for i in range(20)])
    first = corruption_sweep(model, (images, labels), ["contrast"], [2, 3], seed=0)
    updates: list[dict] = []
    same = corruption_sweep(model, (images, labels), ["contrast"], [2, 3], seed=0,
                            previous=first, on_update=updates.append)
    assert updates == [] and same["accuracy"] == first["accuracy"]
    assert any("kept, not recomputed" in n for n in same["notes"])
    # an interrupted sweep: one cell missing, a new severity asked for
    partial = json.loads(json.dumps(first))
    partial["accuracy"]["contrast"][1] = None
    more = corruption_sweep(model, (images, labels), ["contrast"], [3, 4], seed=0,
                            previous=partial, on_update=updates.append)
    assert len(updates) == 2 and more["severities"] == [2, 3, 4] and more["complete"]
    assert more["accuracy"]["contrast"][:2] == first["accuracy"]["contrast"]


def test_corrupt_run_writes_report_and_heat_map_and_reuses_cells(run):
    rep = corrupt_run(run, corruptions=["fog", "gaussian_noise"], severities=[1, 3],
                      max_images=24, seed=1, device="cpu")
    path = run / f"corruption-{rep['key']}.json"
    assert rep["path"] == str(path) and rep["plot"] == str(path.with_suffix(".png"))
    assert path.with_suffix(".png").read_bytes()[:8] == PNG_SIGNATURE
    on_disk = json.loads(path.read_text())
    assert on_disk["accuracy"] == rep["accuracy"] and on_disk["complete"]
    assert on_disk["corruptions"] == ["gaussian_noise", "fog"]
    assert on_disk["weights"]["file"] == "best.pt" and len(on_disk["weights"]["sha256"]) == 64
    assert on_disk["rule"] == "bp" and on_disk["num_images"] == 24 and on_disk["seed"] == 1
    cells = [v for n in on_disk["corruptions"] for v in on_disk["accuracy"][n]]
    assert on_disk["mean"] == pytest.approx(np.mean(cells))
    assert any("32-px images" in n for n in on_disk["notes"])  # the tiny run is 8 px
    # the same settings again: nothing recomputed, the file untouched
    stamp = path.stat().st_mtime_ns
    again = corrupt_run(run, corruptions=["fog"], severities=[3], max_images=24, seed=1,
                        device="cpu")
    assert path.stat().st_mtime_ns == stamp and again["accuracy"] == rep["accuracy"]
    assert any("already computed" in n for n in again["notes"])
    # an interrupted sweep (a null cell on disk) continues with only that cell
    on_disk["accuracy"]["fog"][1] = None
    path.write_text(json.dumps(on_disk))
    resumed = corrupt_run(run, corruptions=["fog", "gaussian_noise"], severities=[1, 3],
                          max_images=24, seed=1, device="cpu")
    assert resumed["accuracy"] == rep["accuracy"]
    assert any("kept, not recomputed" in n for n in resumed["notes"])
    # other settings: another report beside it
    other = corrupt_run(run, corruptions=["fog"], severities=[1], max_images=24, seed=2,
                        device="cpu")
    assert other["key"] != rep["key"] and len(list(run.glob("corruption-*.json"))) == 2


def test_corrupt_run_reads_official_arrays(run, tmp_path):
    arrays, labels = write_cifar_c(tmp_path / "c10c")
    rep = corrupt_run(run, root=tmp_path / "c10c", severities=[2, 4], max_images=4, seed=0,
                      device="cpu", out_dir=tmp_path / "out")
    assert rep["source"] == "official" and rep["corruptions"] == ["gaussian_noise", "fog"]
    assert rep["num_images"] == 4 and rep["resized_from"] == 32 and rep["image_size"] == 8
    assert any("resized" in n for n in rep["notes"])
    assert any("trained on digits" in n for n in rep["notes"])
    assert rep["clean_accuracy"] is not None and rep["complete"]
    assert (tmp_path / "out" / f"corruption-{rep['key']}.png").is_file()
    # the cells are what the model says of exactly those rows, resized like the run's images
    folder = CifarC(tmp_path / "c10c", image_size=8, max_images=4, seed=0)
    model = open_run(run, device="cpu", load_data=False).model
    with torch.no_grad():
        for name in rep["corruptions"]:
            cell = folder.dataset(name, 4)
            x = torch.stack([cell[i][0] for i in range(len(cell))])
            hit = (model(x).argmax(1).numpy() == labels[folder.positions(4)]).mean()
            assert rep["accuracy"][name][1] == pytest.approx(hit)


def test_official_arrays_at_their_own_size_with_a_32_px_model(tmp_path):
    arrays, labels = write_cifar_c(tmp_path, names=("contrast",), k=5)
    model = create_model("small-cnn", "classify", num_classes=10).eval()
    rep = corruption_sweep(model, CifarC(tmp_path, num_classes=10), severities=[3])
    x = torch.from_numpy(arrays["contrast"][10:15]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        hit = (model(x).argmax(1).numpy() == labels[10:15]).mean()
    assert rep["accuracy"] == {"contrast": [pytest.approx(hit)]}
    assert rep["clean_accuracy"] is None and rep["mean"] == pytest.approx(hit)


def test_corrupt_run_refusals(run, tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="hash run: corruption accuracy needs a classif"):
        corrupt_run(tiny_run("hash", "bp"), device="cpu")
    write_cifar_c(tmp_path / "c100c", classes=100, seed=1)
    with pytest.raises(ConfigError, match="class ids up to .* 10 outputs"):
        corrupt_run(run, root=tmp_path / "c100c", max_images=2, device="cpu",
                    out_dir=tmp_path)
    with pytest.raises(ConfigError, match="motion_blur.*--root"):
        corrupt_run(run, corruptions=["motion_blur"], device="cpu")
    with pytest.raises(ConfigError, match="severity must be one of"):
        corrupt_run(run, severities=[0, 2], device="cpu")
