"""The trainer hosting learners: SGD + every schedule resumes bit-identically after a
mid-epoch Ctrl-C (PEPITA too), the autograd learner is today's step, adversarial training
feeds in-budget batches that change the gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import CtrlCAt

from retrieval_bio.datasets import TensorSplit
from retrieval_bio.learners import AdversarialTraining, Autograd, Pepita, StepContext
from retrieval_bio.losses import create_loss
from retrieval_bio.models import create_model
from retrieval_bio.runs import CHECKPOINT, load_checkpoint
from retrieval_bio.train import Trainer
from retrieval_bio.train.optim import create_optimizer, create_schedule


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g)
    y = torch.nn.functional.one_hot((x.mean((1, 2, 3)) * 30).long() % 3, 3).float()
    return TensorSplit(x, y)


def _model():
    torch.manual_seed(0)
    # dropout: the result depends on the global RNG, which resume must restore
    return create_model("mlp", "classify", num_classes=3, image_size=8, hidden=[16],
                        dropout=0.3)


SCHEDULES = {
    "none": dict(),
    "multistep": dict(milestones=[1, 2], gamma=0.5),
    "cosine": dict(t_max=2, lr_min=1e-4),
    "linear": dict(t_max=3),
}


def _trainer(model, run_dir, schedule, learner=None, hooks=(), nesterov=False):
    groups = [{"params": list(model.backbone.parameters()), "lr": 0.05},
              {"params": list(model.head.parameters()), "lr": 0.1}]
    opt = create_optimizer("sgd", groups, momentum=0.9, nesterov=nesterov, weight_decay=1e-3)
    sched = create_schedule(schedule, epochs=4, **SCHEDULES[schedule])
    return Trainer(model, create_loss("mse-softmax", num_classes=3), _data(),
                   param_groups=groups, optimizer=opt, schedule=sched, epochs=4,
                   batch_size=16, seed=3, run_dir=run_dir, step_hooks=hooks,
                   learner=learner)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("learner", ["autograd", "pepita"])
def test_sgd_and_schedules_resume_bit_identically_mid_epoch(tmp_path, schedule, learner):
    def make():
        return Autograd() if learner == "autograd" else Pepita(seed=4)

    ref = _model()
    ref_trainer = _trainer(ref, tmp_path / "ref", schedule, make(),
                           nesterov=schedule == "cosine")
    ref_trainer.fit()
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        _trainer(model, tmp_path / "run", schedule, make(), hooks=[CtrlCAt(14)],
                 nesterov=schedule == "cosine").fit()  # epoch 3 of 4, step 2 of 6
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["global_step"] == 14
    resumed = _model()
    trainer = _trainer(resumed, tmp_path / "run", schedule, make(),
                       nesterov=schedule == "cosine")
    trainer.fit(resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    lrs = [h["lr"] for h in ref_trainer.state.history]
    assert lrs == [h["lr"] for h in trainer.state.history]
    expected = [[create_schedule(schedule, epochs=4, **SCHEDULES[schedule]).lr(base, e)
                 for base in (0.05, 0.1)] for e in range(4)]
    assert lrs == expected


def test_autograd_learner_is_todays_step():
    """The default learner and Adam equal an inline copy of the step before learners."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.ReLU(), nn.Linear(8, 3))
    ref = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.ReLU(), nn.Linear(8, 3))
    ref.load_state_dict(net.state_dict())
    loss_fn = create_loss("cross-entropy", num_classes=3)
    trainer = Trainer(net, loss_fn, _data(), param_groups=[{"params": list(net.parameters()),
                      "lr": 1e-2}], epochs=1, batch_size=16, seed=0)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=5e-4)
    data = _data()
    x, y = data.images[:16], data.labels[:16]
    for _ in range(3):
        value, stop = trainer._train_step(x, y)
        assert not stop
        opt.zero_grad()
        loss = loss_fn(ref(x), y)
        loss.backward()
        opt.step()
        assert value == float(loss.detach())
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


class _Recorder(Autograd):
    """The autograd learner, keeping the batches it was given."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def training_step(self, model, objective, images, labels, ctx):
        self.batches.append((images.detach().clone(), labels.clone()))
        return super().training_step(model, objective, images, labels, ctx)


@pytest.mark.parametrize("attack,mix", [("pgd", "both"), ("fgsm", "adversarial")])
def test_adversarial_training_feeds_in_budget_batches_that_change_gradients(attack, mix):
    model = _model().train()
    loss_fn = create_loss("cross-entropy", num_classes=3)
    ctx = StepContext(torch.device("cpu"), False, torch.amp.GradScaler("cuda", enabled=False))
    data = _data()
    x, y = data.images[:16], data.labels[:16]
    inner = _Recorder()
    adv = AdversarialTraining(inner, attack, eps=0.1, steps=3, alpha=0.05, mix=mix, seed=1)
    adv.prepare(model, loss_fn)
    torch.manual_seed(7)
    adv.training_step(model, loss_fn, x, y, ctx)
    adv_grads = [p.grad.clone() for p in model.parameters()]
    images, labels = inner.batches[-1]
    x_adv = images[16:] if mix == "both" else images
    if mix == "both":
        assert torch.equal(images[:16], x) and torch.equal(labels, torch.cat([y, y]))
    assert x_adv.shape == x.shape and torch.equal(labels[-16:], y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.05  # it moved
    assert model.training  # the attack ran in eval mode and restored train mode
    # the clean step, with the same dropout draws, gives other gradients
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(7)
    Autograd().training_step(model, loss_fn, x, y, ctx)
    assert any(not torch.allclose(p.grad, g) for p, g in zip(model.parameters(), adv_grads,
                                                                  strict=True))
    # the adversarial examples raise the loss of the model in eval mode
    model.eval()
    with torch.no_grad():
        assert loss_fn(model(x_adv), y) > loss_fn(model(x), y)


def test_adversarial_training_is_reproducible_and_draws_no_global_rng():
    model = _model().eval()
    data = _data()
    x, y = data.images[:16], data.labels[:16]
    adv = AdversarialTraining(Autograd(), "pgd", eps=0.1, steps=2, seed=1)
    torch.manual_seed(0)
    a = adv.examples(model, x, y, global_step=5)
    after = torch.rand(1)
    torch.manual_seed(0)
    b = adv.examples(model, x, y, global_step=5)
    assert torch.equal(a, b) and torch.equal(torch.rand(1), after)
    assert not torch.equal(a, adv.examples(model, x, y, global_step=6))  # per-step seed


def test_hash_runs_train_adversarially_with_hag():
    torch.manual_seed(0)
    model = create_model("small-cnn", "hash", bits=16).train()
    loss_fn = create_loss("hyp2", num_classes=3, bits=16)
    ctx = StepContext(torch.device("cpu"), False, torch.amp.GradScaler("cuda", enabled=False))
    data = _data()
    x, y = data.images[:8], data.labels[:8]
    inner = _Recorder()
    adv = AdversarialTraining(inner, "hag", eps=0.05, steps=3, mix="adversarial")
    adv.prepare(model, loss_fn)
    assert adv.training_step(model, loss_fn, x, y, ctx) > 0
    x_adv = inner.batches[-1][0]
    assert 0 < (x_adv - x).abs().max() <= 0.05 + 1e-6  # HAG steps by the raw gradient
    with pytest.raises(Exception, match="adv_train 'pgd' cannot train a hash"):
        AdversarialTraining(Autograd(), "pgd", eps=0.1).prepare(model, loss_fn)
