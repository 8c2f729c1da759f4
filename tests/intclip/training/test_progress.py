"""The progress bars of issue 24, drawn into a terminal stand-in: training shows the epoch of
the run, steps, the smoothed loss, the learning rate, images/s and the time left; scoring shows
its batches. Off a terminal nothing but the plain lines (test_train_conveniences)."""

from __future__ import annotations

import io
import sys

import torch
from rich.console import Console

import intclip.training.progress as progress
from intclip.training.run_log import RunLog


def terminal(monkeypatch) -> io.StringIO:
    screen = io.StringIO()
    monkeypatch.setattr(progress, "stderr", Console(file=screen, force_terminal=True))
    monkeypatch.setattr(progress, "BAR_READ_EVERY_S", 0.0)
    return screen


def test_the_training_bar_shows_epoch_loss_lr_speed_and_time_left(monkeypatch):
    screen = terminal(monkeypatch)
    log = RunLog(screen)
    with progress.EpochProgress(2, 60, 4, log, shown=True) as shown:
        for step in range(1, 5):
            shown.smooth(torch.tensor(0.5))
            shown.update(step, step * 16, torch.tensor(0.5 * step), step, {"semantic": 2e-3})
    drawn = screen.getvalue()
    for said in ("epoch 3/60", "4/4", "loss 0.5000", "lr 2.00e-03", "img/s", "eta"):
        assert said in drawn, said
    assert "epoch 3/60 step 4/4" in "".join(log._held)  # the plain line goes to the log only


def test_a_silent_rank_draws_nothing(monkeypatch):
    screen = terminal(monkeypatch)
    with progress.EpochProgress(0, 2, 2, RunLog(screen), shown=False) as shown:
        shown.smooth(torch.tensor(1.0))
        shown.update(2, 32, torch.tensor(2.0), 2, {"semantic": 1e-3})
    assert screen.getvalue() == ""


def test_scoring_shows_a_bar_of_its_batches_on_a_terminal_only(monkeypatch):
    screen = terminal(monkeypatch)
    monkeypatch.setattr(sys, "__stderr__", screen)
    assert list(progress.batch_bar(iter(range(3)), 3, "validation", shown=True)) == [0, 1, 2]
    assert "validation" in screen.getvalue() and "3/3" in screen.getvalue()
    monkeypatch.setattr(progress, "stderr", Console(file=io.StringIO()))
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", quiet)
    assert list(progress.batch_bar(iter(range(3)), 3, "validation", shown=True)) == [0, 1, 2]
    assert quiet.getvalue() == ""
