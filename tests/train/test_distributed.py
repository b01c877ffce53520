"""Data parallelism with the gloo backend on this CPU: world size 2 against one process.

The oracle of every test is the same computation in one process: the trainer's weights and
codes of a one-process run, a one-process encode, a one-process loss gradient. The runs
use a dropout-free MLP: each rank draws its own dropout masks and normalises its own share
of the batch in BatchNorm, so nets with those train equivalently, not identically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from retrieval_bio import distributed
from retrieval_bio.config import RunConfig
from retrieval_bio.datasets import TensorSplit
from retrieval_bio.eval.encode import encode, encode_attacked
from retrieval_bio.learners.adversarial import build_attack
from retrieval_bio.learners.krotov import KrotovHopfield
from retrieval_bio.losses import create_loss
from retrieval_bio.models import create_model
from retrieval_bio.train import Trainer, train_run

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RUN = dict(stage="finetune", task="hash", backbone="mlp", dataset="digits", image_size=8,
           bits=16, batch_size=64, lr_backbone=3e-3, lr_head=3e-3, device="cpu", seed=1,
           model_options={"hidden": [64], "dropout": 0.0}, num_workers=0)
TOL = 1e-5  # relative, per tensor: ‖a − b‖ / ‖a‖


# -- helpers ------------------------------------------------------------------------------
def _torchrun(*args: str) -> None:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` with one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _worker(cfg: dict, resume: bool = False) -> None:
    _torchrun(str(HERE / "ddp_worker.py"), json.dumps(cfg), *(["--resume"] if resume else []))


def _one_process(out: Path, resume: bool = False, **overrides) -> None:
    train_run(RunConfig(**{**RUN, **overrides, "out": str(out)}), resume=resume)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return state.get("model", state)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _assert_same_run(a: Path, b: Path) -> None:
    """Weights within TOL, identical codes and mAP (the issue's criterion)."""
    wa, wb = _weights(a / "best.pt"), _weights(b / "best.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert _relative(wb[k], wa[k]) <= TOL, k
    ca, cb = np.load(a / "codes.npz"), np.load(b / "codes.npz")
    for k in ca.files:
        assert np.array_equal(ca[k], cb[k]), k
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert ma["map@k"] == mb["map@k"]
    assert [h["epoch"] for h in ma["history"]] == [h["epoch"] for h in mb["history"]]


def _spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, init_file, *args)`` in ``world`` gloo processes."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(fn, world, f"file://{tmp}/store", args), nprocs=world)


def _entry(rank: int, fn, world: int, init: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


# -- whole runs through torchrun ----------------------------------------------------------
def test_frsf_hash_run_at_world_size_two_equals_one_process_through_the_cli(tmp_path):
    """``torchrun ... -m retrieval_bio finetune`` takes no other flag."""
    _one_process(tmp_path / "one", rule="frsf", epochs=2)
    flags = ["--task", "hash", "--rule", "frsf", "--backbone", "mlp", "--model-opt",
             "hidden=[64]", "--model-opt", "dropout=0", "--dataset", "digits",
             "--image-size", "8", "--bits", "16", "--batch-size", "64", "--lr-backbone",
             "3e-3", "--lr-head", "3e-3", "--device", "cpu", "--seed", "1", "--epochs", "2",
             "--num-workers", "0"]
    _torchrun("-m", "retrieval_bio", "finetune", *flags, "--out", str(tmp_path / "two"))
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_brsf_ranks_hold_identical_weights_and_feedback(tmp_path):
    """brSF redraws its sign-feedback M after every step: the draws agree on every rank."""
    _one_process(tmp_path / "one", rule="brsf", epochs=1)
    _worker({**RUN, "rule": "brsf", "epochs": 1, "out": str(tmp_path / "two")})
    r0 = torch.load(f"{tmp_path / 'two'}.rank0.pt", weights_only=True)
    r1 = torch.load(f"{tmp_path / 'two'}.rank1.pt", weights_only=True)
    assert any(k.endswith(".M") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_bp_checkpoint_of_world_size_two_resumes_in_one_process(tmp_path):
    _one_process(tmp_path / "one", rule="bp", epochs=1)
    _worker({**RUN, "rule": "bp", "epochs": 1, "out": str(tmp_path / "two")})
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    _one_process(tmp_path / "one", resume=True, rule="bp", epochs=2)
    _one_process(tmp_path / "two", resume=True, rule="bp", epochs=2)
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_bp_checkpoint_of_one_process_resumes_at_world_size_two(tmp_path):
    _one_process(tmp_path / "ref", rule="bp", epochs=2)
    _one_process(tmp_path / "two", rule="bp", epochs=1)
    _worker({**RUN, "rule": "bp", "epochs": 2, "out": str(tmp_path / "two")}, resume=True)
    _assert_same_run(tmp_path / "ref", tmp_path / "two")


# -- the collectives ----------------------------------------------------------------------
def _dataset(n: int = 37) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.rand(n, 3, 4, 4, generator=g),
                       torch.eye(3)[torch.randint(0, 3, (n,), generator=g)])


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))


def _pgd(model: torch.nn.Module):
    return build_attack(model, "pgd", eps=0.05, steps=3, random_start=True, seed=5)


def _encode_ranks(rank: int, world: int, out: str) -> None:
    result = encode(_encoder(), _dataset(), batch_size=4)
    np.savez(f"{out}.{rank}.npz", *result)
    model, attacked = _encoder(), []
    pgd = _pgd(model)

    def attack(x, y):
        attacked.append(len(x))
        return pgd(x, y)

    np.savez(f"{out}.adv.{rank}.npz", *encode_attacked(model, attack, _dataset(), batch_size=4),
             attacked=np.array(sum(attacked)))
    model = _encoder()
    with pytest.raises(ValueError, match="multiple of the"):  # 5 items do not split evenly
        Trainer(model, torch.nn.CrossEntropyLoss(), _dataset(),
                param_groups=[{"params": list(model.parameters())}], epochs=1, batch_size=5)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_encoding_returns_items_in_dataset_order(tmp_path, world):
    _spawn(_encode_ranks, world, str(tmp_path / "enc"))
    ref = encode(_encoder(), _dataset(), batch_size=4)
    assert np.array_equal(ref[2], np.arange(37))
    model = _encoder()
    adv_ref = encode_attacked(model, _pgd(model), _dataset(), batch_size=4)
    assert not np.array_equal(adv_ref[0], ref[0])  # the attack moved the outputs
    for r in range(world):
        got = np.load(tmp_path / f"enc.{r}.npz")
        for j in range(3):
            assert np.array_equal(got[f"arr_{j}"], ref[j]), (r, j)
        adv = np.load(tmp_path / f"enc.adv.{r}.npz")  # the validation attack's encoding
        for j in range(2):
            assert np.array_equal(adv[f"arr_{j}"], adv_ref[j]), (r, j)
    # each rank attacked its own share only
    assert sum(int(np.load(tmp_path / f"enc.adv.{r}.npz")["attacked"]) for r in range(world)) == 37


def _multi_label_batch(n: int = 16, classes: int = 4):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(n, 3, 4, 4, generator=g)
    y = (torch.rand(n, classes, generator=g) < 0.5).float()
    y[torch.arange(n), torch.arange(n) % classes] = 1.0  # no empty label vector
    return x, y


def _hyp2_grads(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("mlp", "hash", num_classes=4, bits=16, image_size=4, hidden=[8],
                         dropout=0.0)
    loss_fn = create_loss("hyp2", num_classes=4, bits=16, seed=0)
    if distributed.world_size() == 1:  # the whole batch: the pair term takes part
        assert loss_fn.pair_term(model(x), y).item() > 0
    loss = loss_fn(model(x), y)
    loss.backward()
    params = [*model.parameters(), *loss_fn.parameters()]
    distributed.average_gradients(params)
    return {str(i): p.grad.clone() for i, p in enumerate(params)}


def _hyp2_ranks(rank: int, world: int, out: str) -> None:
    x, y = _multi_label_batch()
    share = len(x) // world
    mine = slice(rank * share, (rank + 1) * share)
    torch.save(_hyp2_grads(x[mine], y[mine]), f"{out}.{rank}.pt")


def test_hyp2_pairs_of_the_global_batch_give_the_one_process_gradient(tmp_path):
    """The pair term couples samples: each rank sees all pairs through the gathered batch,
    and the averaged gradient equals the one-process gradient of the whole batch."""
    _spawn(_hyp2_ranks, 2, str(tmp_path / "g"))
    ref = _hyp2_grads(*_multi_label_batch())
    for r in range(2):
        got = torch.load(tmp_path / f"g.{r}.pt", weights_only=True)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7)


def _krotov_grad(v: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    model = create_model("kh", "classify", num_classes=3, image_size=4, hidden=12)
    learner = KrotovHopfield(k=2, delta=0.4)
    learner.training_step(model, torch.nn.Identity(), v, torch.zeros(len(v), 3), None)
    return model.backbone.net.currents.weight.grad.clone()


def _krotov_ranks(rank: int, world: int, out: str) -> None:
    v = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.save(_krotov_grad(v[rank * 10:(rank + 1) * 10]), f"{out}.{rank}.pt")


def test_krotov_update_is_normalised_after_summing_over_ranks(tmp_path):
    """Krotov–Hopfield's max-normalisation is not linear: the ranks sum ΔW first."""
    _spawn(_krotov_ranks, 2, str(tmp_path / "k"))
    v = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    ref = _krotov_grad(v)
    for r in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"k.{r}.pt"), ref, rtol=1e-5,
                                   atol=1e-6)


def _learner_grads(rule: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The trainer's step without the optimiser: the learner writes ``.grad``, then the
    ranks average them."""
    from retrieval_bio.learners import StepContext, create_learner, prepare_model

    torch.manual_seed(0)
    if rule == "ep":
        model = create_model("ep-small", "classify", num_classes=3, image_size=8, t_free=8,
                             t_nudge=4)
    else:
        model = create_model("mlp", "classify", num_classes=3, image_size=8, hidden=[12],
                             dropout=0.0)
    # float64: EP's estimate ΔΦ/2β cancels two nearly equal energies, which turns the
    # last-bit differences of other batch shapes into 1e-4 relative ones in float32
    model = prepare_model(model, rule, seed=0).double()
    x, y = x.double(), y.double()
    learner = create_learner(rule, seed=0)
    objective = create_loss("mse-softmax" if rule == "ep" else "cross-entropy", num_classes=3)
    learner.prepare(model, objective)
    learner.double()  # PEPITA's F
    ctx = StepContext(torch.device("cpu"), False, torch.amp.GradScaler("cuda", enabled=False))
    learner.training_step(model, objective, x, y, ctx)
    distributed.average_gradients(list(model.parameters()))
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _learner_batch():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(12, 3, 8, 8, generator=g),
            torch.eye(3)[torch.randint(0, 3, (12,), generator=g)])


def _learner_ranks(rank: int, world: int, out: str, rule: str) -> None:
    x, y = _learner_batch()
    torch.save(_learner_grads(rule, x[rank * 6:(rank + 1) * 6], y[rank * 6:(rank + 1) * 6]),
               f"{out}.{rank}.pt")


@pytest.mark.parametrize("rule", ["pepita", "ep"])
def test_pepita_and_ep_gradients_are_averaged_like_autograd(tmp_path, rule):
    """PEPITA and EP write ``.grad`` outside autograd; averaged over two ranks holding half
    the batch each, they equal the one-process gradient of the whole batch."""
    _spawn(_learner_ranks, 2, str(tmp_path / "l"), rule)
    ref = _learner_grads(rule, *_learner_batch())
    assert ref and all(g.abs().sum() > 0 for g in ref.values())
    for r in range(2):
        got = torch.load(tmp_path / f"l.{r}.pt", weights_only=True)
        assert got.keys() == ref.keys()
        for k in ref:
            assert _relative(got[k], ref[k]) <= TOL, k


class _NanOnRank1(torch.nn.Module):
    def forward(self, out, labels):
        loss = torch.nn.functional.cross_entropy(out, labels.argmax(1))
        return loss * float("nan") if distributed.rank() == 1 else loss


def _nan_ranks(rank: int, world: int, out: str) -> None:
    from retrieval_bio.train import NonFiniteLossError

    model = _encoder()
    trainer = Trainer(model, _NanOnRank1(), _dataset(), param_groups=[
        {"params": list(model.parameters())}], epochs=1, batch_size=4)
    x, y = _dataset().images[rank * 2:(rank + 1) * 2], _dataset().labels[rank * 2:(rank + 1) * 2]
    try:
        trainer._train_step(x, y)
        result = "no error"
    except NonFiniteLossError as e:
        result = str(e)
    Path(f"{out}.{rank}").write_text(result)


def test_a_nan_loss_on_one_rank_stops_every_rank_cleanly(tmp_path):
    """Autograd skips the backward of a non-finite loss, so that rank has no gradients; the
    loss is reduced first and every rank raises, instead of a broken reduction."""
    _spawn(_nan_ranks, 2, str(tmp_path / "nan"))
    for r in range(2):
        assert "loss is nan" in (tmp_path / f"nan.{r}").read_text()


def _spectral_basis(rank: int, world: int, out: str) -> None:
    """The spectral regulariser's basis after a refresh over 300 images, and how many
    images this rank ran through the model."""
    from retrieval_bio.train.pipeline import refresh_statistics

    torch.manual_seed(0)
    model = create_model("shlp", image_size=3, hidden=5, spectral_penalty=1.0,
                         spectral_alpha=1.0).double()
    g = torch.Generator().manual_seed(2)
    data = TensorSplit(torch.rand(300, 3, 3, 3, generator=g).double(),
                       torch.eye(10)[torch.arange(300) % 10])
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    refresh_statistics(model, data, torch.device("cpu"), batch_size=16)
    torch.save({"basis": model.backbone.net.spectral.basis.clone(),
                "seen": torch.tensor(sum(seen))}, f"{out}.{rank}.pt")


@pytest.mark.parametrize("world", [2, 3])
def test_spectral_statistics_refresh_is_sharded_and_equals_one_process(tmp_path, world):
    """The refresh runs batches of 256: 300 images are two batches, split 256 / 44 over two
    ranks, and over three ranks one of them has none. The ranks' summed statistics give
    the one-process eigenbasis (up to each eigenvector's sign)."""
    _spawn(_spectral_basis, world, str(tmp_path / "s"))
    _spectral_basis(0, 1, str(tmp_path / "ref"))
    ref = torch.load(tmp_path / "ref.0.pt", weights_only=True)
    seen = []
    for r in range(world):
        got = torch.load(tmp_path / f"s.{r}.pt", weights_only=True)
        overlap = (got["basis"].T @ ref["basis"]).abs()
        torch.testing.assert_close(overlap, torch.eye(5, dtype=overlap.dtype), atol=1e-8,
                                   rtol=0)
        seen.append(int(got["seen"]))
    assert sorted(seen) == ([44, 256] if world == 2 else [0, 44, 256])
