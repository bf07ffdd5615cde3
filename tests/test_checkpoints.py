"""The resumable checkpoint every family's fit uses, on a tiny model: a resumed training ends bit for bit where an
uninterrupted one does, re-reports the epochs done, and a changed key or ``resume=False`` starts afresh."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from cellops.checkpoints import LAST_CHECKPOINT, ResumableCheckpoint, TrainingHistory, fingerprint

KEY = {"training": {"learning_rate": 0.1, "epochs": 3}, "data_version": "abc"}


@dataclass
class ToyHistory(TrainingHistory):
    loss: list[float] = field(default_factory=list)


class Interrupted(Exception):
    pass


def _train(root, key=KEY, *, epochs=3, resume=True, stop_after=None, reported=None, seen=None):
    """A small fit on the shared checkpoint: every random source (Python, NumPy, torch, dropout, a generator), a
    scheduler and a gradient scaler stepped per batch, so only a complete restore gives the same weights. ``seen``
    gets each epoch's starting position of schedule and scaler."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * 4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=1)  # doubles its scale every step
    generator = torch.Generator().manual_seed(1)
    checkpoint = ResumableCheckpoint(root, key, ToyHistory(), model=model, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler, generator=generator, resume=resume)
    report = (lambda epoch, metrics: reported.append(epoch)) if reported is not None else None
    history = checkpoint.restore(report)
    for epoch in range(checkpoint.first_epoch, epochs):
        if seen is not None:
            seen.append((epoch, scheduler.last_epoch, optimizer.param_groups[0]["lr"], scaler.get_scale()))
        total = 0.0
        for _ in range(4):
            x = torch.randn(8, 4, generator=generator) + float(np.random.rand()) + random.random()
            loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item()
        history.loss.append(total / 4)
        history.epoch_seconds.append(1.0)
        if history.best_epoch < 0 or history.loss[-1] < history.loss[history.best_epoch]:
            checkpoint.keep_best(epoch)
        checkpoint.end_epoch(epoch, {"loss": history.loss[-1]}, report)
        if epoch == stop_after:
            raise Interrupted
    return model, checkpoint.finish(), checkpoint


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_resumed_training_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
    whole, expected, _ = _train(tmp_path / "whole")
    with pytest.raises(Interrupted):
        _train(tmp_path / "resumed", stop_after=0)
    assert (tmp_path / "resumed" / fingerprint(KEY) / LAST_CHECKPOINT).is_file()
    reported, seen = [], []
    resumed, history, checkpoint = _train(tmp_path / "resumed", reported=reported, seen=seen)
    assert history.resumed_from_epoch == 0 and isinstance(history, ToyHistory)
    assert reported == [0, 1, 2]  # the epoch done before the kill is reported again, then the new ones
    assert history.loss == expected.loss and history.best_epoch == expected.best_epoch
    assert _same_weights(whole, resumed)
    assert not checkpoint.directory.exists()  # finished: removed


def test_the_schedule_and_the_scaler_continue_from_the_saved_epoch(tmp_path):
    uninterrupted = []
    _train(tmp_path / "whole", seen=uninterrupted)
    with pytest.raises(Interrupted):
        _train(tmp_path / "resumed", stop_after=1)
    resumed = []
    _train(tmp_path / "resumed", seen=resumed)
    # Epoch 2 starts eight steps into the schedule, at its learning rate and the scaler's scale after eight steps.
    assert resumed == uninterrupted[2:]
    assert resumed[0][:2] == (2, 8) and resumed[0][3] == 2.0 ** 9


def test_a_changed_key_starts_afresh_in_a_folder_of_its_own(tmp_path):
    with pytest.raises(Interrupted):
        _train(tmp_path, stop_after=0)
    other = {**KEY, "data_version": "def"}
    reported = []
    _, history, checkpoint = _train(tmp_path, other, reported=reported)
    assert history.resumed_from_epoch is None and reported == [0, 1, 2]
    assert checkpoint.directory == tmp_path / fingerprint(other) != tmp_path / fingerprint(KEY)
    assert (tmp_path / fingerprint(KEY) / LAST_CHECKPOINT).is_file()  # the other training's is left alone


def test_resume_false_starts_afresh_whatever_is_saved(tmp_path):
    whole, _, _ = _train(tmp_path / "whole")
    with pytest.raises(Interrupted):
        _train(tmp_path / "again", stop_after=1)
    reported = []
    again, history, _ = _train(tmp_path / "again", resume=False, reported=reported)
    assert history.resumed_from_epoch is None and reported == [0, 1, 2]
    assert _same_weights(whole, again)


def test_without_a_root_nothing_is_written_and_the_best_weights_are_returned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, history, checkpoint = _train(None)
    assert checkpoint.directory is None and checkpoint.path is None and not any(tmp_path.iterdir())
    assert history.best_epoch == int(np.argmin(history.loss))
    assert _same_weights(model, _with_weights(checkpoint.best_weights))


def test_a_checkpoint_of_another_training_in_the_folder_is_not_resumed(tmp_path):
    with pytest.raises(Interrupted):
        _train(tmp_path, stop_after=0)
    path = tmp_path / fingerprint(KEY) / LAST_CHECKPOINT
    state = torch.load(path, weights_only=False)
    torch.save({**state, "fingerprint": "something else"}, path)
    _, history, _ = _train(tmp_path)
    assert history.resumed_from_epoch is None


def _with_weights(weights: dict) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    model.load_state_dict(weights)
    return model
