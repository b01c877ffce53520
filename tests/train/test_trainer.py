"""The shared trainer: resume equals an uninterrupted run, atomic checkpoints, NaN guard."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn as nn
from helpers import CtrlCAt

from retrieval_bio.datasets import TensorSplit
from retrieval_bio.runs import CHECKPOINT, atomic_torch_save, load_checkpoint
from retrieval_bio.train import NonFiniteLossError, Trainer


class _CE(nn.Module):
    def forward(self, logits, labels):
        return nn.functional.cross_entropy(logits, labels.argmax(1))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    y = torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 30).long() % 3, 3).float()
    return TensorSplit(x, y)


def _model():
    torch.manual_seed(0)
    # dropout makes the result depend on the global RNG, which resume must restore
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(32, 3))


def _trainer(model, run_dir, epochs=3, hooks=()):
    return Trainer(model, _CE(), _data(), param_groups=[{"params": list(model.parameters()),
                   "lr": 1e-2}], epochs=epochs, batch_size=16, seed=3, run_dir=run_dir,
                   step_hooks=hooks)


@pytest.mark.parametrize("stop_after,sig", [  # epoch end, mid-epoch, mid-epoch 3
    (6, signal.SIGINT), (8, signal.SIGINT), (13, signal.SIGINT),
    (8, signal.SIGTERM)])  # what SLURM sends before a time limit, and torchrun to stop
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, stop_after, sig):
    ref = _model()
    _trainer(ref, tmp_path / "ref").fit()

    model = _model()
    with pytest.raises(KeyboardInterrupt):
        _trainer(model, tmp_path / "run", hooks=[CtrlCAt(stop_after, sig)]).fit()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored after the run
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["global_step"] == stop_after

    resumed = _model()  # a fresh process would start from scratch weights
    state = _trainer(resumed, tmp_path / "run").fit(resume=True)
    assert state.epoch == 3
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_sigterm_that_kills_the_validation_workers_keeps_the_epoch(tmp_path):
    """SLURM's SIGTERM during validation kills the validation loader's workers: the run
    stops with the epoch's training kept, and the resumed run validates it again and ends
    as the uninterrupted one (weights and every epoch's loss and metric)."""
    import os

    from torch.utils.data import DataLoader

    from retrieval_bio.loading import loader_options

    val = _data(48, seed=1)

    def validate(model, sigterm_at=None):
        validate.calls += 1
        loader = DataLoader(val, batch_size=8, **loader_options(
            val, 2, torch.device("cpu"), persistent=True))
        it = iter(loader)
        correct = 0
        for i, (x, y, _) in enumerate(it):
            if validate.calls == sigterm_at and i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                for worker in it._workers:
                    os.kill(worker.pid, signal.SIGTERM)
                for worker in it._workers:  # dead before the next batch is asked for
                    worker.join(timeout=10)
            correct += int((model(x).argmax(1) == y.argmax(1)).sum())
        return {"acc": correct / len(val)}

    def run(model, run_dir, sigterm_at=None):
        validate.calls = 0
        return Trainer(model, _CE(), _data(), param_groups=[{
            "params": list(model.parameters()), "lr": 1e-2}], epochs=3, batch_size=16,
            seed=3, run_dir=run_dir, select_metric="acc",
            validate=lambda m: validate(m, sigterm_at))

    ref = _model()
    ref_state = run(ref, tmp_path / "ref").fit()
    with pytest.raises(KeyboardInterrupt):
        run(_model(), tmp_path / "run", sigterm_at=2).fit()
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["history"])) == (1, 6, 1)
    resumed = _model()
    state = run(resumed, tmp_path / "run").fit(resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    for a, b in zip(ref_state.history, state.history, strict=True):
        assert (a["loss"], a["acc"]) == (b["loss"], b["acc"])


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"w": torch.arange(5)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("simulated crash while writing")

    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_torch_save({"w": torch.zeros(5), "bad": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_nan_loss_stops_with_the_step_named(tmp_path):
    class NanAfter(_CE):
        calls = 0

        def forward(self, logits, labels):
            NanAfter.calls += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if NanAfter.calls == 8 else loss

    model = _model()
    t = Trainer(model, NanAfter(), _data(), param_groups=[{"params": list(model.parameters()),
                "lr": 1e-2}], epochs=3, batch_size=16, run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 \(global step 8\)"):
        t.fit()
    # the checkpoint of epoch 1 is intact and resumable
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1


def test_parameters_outside_any_group_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="in no parameter group"):
        Trainer(model, _CE(), _data(), param_groups=[{"params": [model[1].weight]}],
                epochs=1, batch_size=16)


def _augmented(n=64):
    import numpy as np

    from retrieval_bio.datasets.images import ArraySplit
    from retrieval_bio.datasets.transforms import make_transform

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = torch.eye(3)[torch.as_tensor(rng.integers(0, 3, n))]
    return ArraySplit(images, labels, np.arange(n), make_transform(8, train=True, augment=True))


def test_augmentation_does_not_depend_on_loader_workers(tmp_path):
    """Each item's random crop and flip come from (seed, epoch, item): two loader workers
    give the weights of none, though the items reach them in another interleaving."""
    weights = []
    for workers in (0, 2):
        model = _model()
        Trainer(model, _CE(), _augmented(), param_groups=[{"params": list(model.parameters()),
                "lr": 1e-2}], epochs=2, batch_size=16, seed=3, num_workers=workers).fit()
        weights.append(model.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    from retrieval_bio.train.trainer import _SeededItems

    items = _SeededItems(_augmented(), seed=3)
    # a new draw each epoch, the same draw for the same (epoch, item)
    assert not all(torch.equal(items[(0, i)][0], items[(1, i)][0]) for i in range(10))
    assert all(torch.equal(items[(1, i)][0], items[(1, i)][0]) for i in range(10))


def test_loader_workers_ignore_ctrl_c():
    """A terminal's Ctrl-C reaches every process of the job: the workers ignore it, so the
    main process can finish its step (and write its checkpoint) with the batches it needs."""
    import os

    from torch.utils.data import DataLoader

    from retrieval_bio.loading import loader_options

    data = _augmented(32)
    loader = DataLoader(data, batch_size=4, **loader_options(data, 2, torch.device("cpu")))
    it = iter(loader)
    next(it), next(it)  # batches go round-robin: both workers are past their init_fn
    for worker in it._workers:
        os.kill(worker.pid, signal.SIGINT)
    assert len(list(it)) == 6


def _batches_then(error: BaseException, n: int = 2):
    yield from range(n)
    raise error


@pytest.mark.parametrize("error", [
    RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly"),
    ConnectionResetError(104, "Connection reset by peer"), EOFError()])
def test_a_loader_that_dies_during_a_requested_stop_ends_the_batches(error):
    """A worker killed by the job's SIGTERM shows as any of these, depending on whether it
    died between batches or while handing one over: with a stop requested, the batches end;
    without one, the error is the user's to see."""
    from retrieval_bio.train.trainer import _GracefulInterrupt, _until_stopped

    interrupt = _GracefulInterrupt()
    with pytest.raises(type(error)):
        list(_until_stopped(_batches_then(error), interrupt, stop_first=False))
    interrupt.requested = True
    assert list(_until_stopped(_batches_then(error), interrupt, stop_first=False)) == [0, 1]
    assert list(_until_stopped(_batches_then(error), interrupt, stop_first=True)) == []


def test_real_workers_killed_with_batches_in_flight_end_a_stopped_epoch():
    """The race the CI met: workers SIGTERMed while their prefetched batches wait in the
    queue. Whichever way their death shows, a requested stop ends the batches cleanly."""
    import os

    from torch.utils.data import DataLoader, TensorDataset

    from retrieval_bio.loading import loader_options
    from retrieval_bio.train.trainer import _GracefulInterrupt, _until_stopped

    data = TensorDataset(torch.randn(64, 3, 8, 8), torch.arange(64))
    for _ in range(4):
        loader = DataLoader(data, batch_size=4, **loader_options(
            data, 2, torch.device("cpu"), persistent=True))
        interrupt = _GracefulInterrupt()
        batches = _until_stopped(loader, interrupt, stop_first=False)
        next(batches)
        workers = loader._iterator._workers
        interrupt.requested = True
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
        assert len(list(batches)) < 15
        for worker in workers:
            worker.join(timeout=10)


def test_sigterm_to_the_whole_job_stops_between_steps_and_resumes(tmp_path):
    """SLURM and torchrun send SIGTERM to every process, loader workers included: the run
    still stops between two steps with a checkpoint that resumes exactly."""
    import os

    def make(hooks=()):
        model = _model()
        trainer = Trainer(model, _CE(), _augmented(), param_groups=[
            {"params": list(model.parameters()), "lr": 1e-2}], epochs=2, batch_size=8, seed=3,
            num_workers=2, run_dir=tmp_path / "run", step_hooks=hooks)
        return model, trainer

    def sigterm_all(model, opt) -> None:
        sigterm_all.calls += 1
        if sigterm_all.calls == 3:
            for worker in trainer._data._iterator._workers:
                os.kill(worker.pid, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    sigterm_all.calls = 0
    model, trainer = make([sigterm_all])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["global_step"] == 3
    resumed, trainer = make()
    trainer.fit(resume=True)
    ref = _model()
    Trainer(ref, _CE(), _augmented(), param_groups=[{"params": list(ref.parameters()),
            "lr": 1e-2}], epochs=2, batch_size=8, seed=3, num_workers=0).fit()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
