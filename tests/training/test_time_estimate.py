"""trainer.TimeEstimate: the estimate of the run's time printed after the first epoch."""

from __future__ import annotations

from exif_keras.training import trainer


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_epochs(monkeypatch, durations, total):
    clock, lines = Clock(), []
    monkeypatch.setattr(trainer.time, "monotonic", clock)
    estimate = trainer.TimeEstimate(total, lines.append)
    for epoch, took in enumerate(durations):
        estimate.on_epoch_begin(epoch)
        clock.now += took
        estimate.on_epoch_end(epoch, {})
    estimate.on_train_end()
    return lines


def test_estimate_after_the_first_epoch_is_epochs_left_times_its_time(monkeypatch):
    lines = run_epochs(monkeypatch, [30.0, 29.0, 31.0], total=10)
    assert len(lines) == 1
    assert "epoch 1 took 30.0 s; 9 epoch(s) left, about 4 min 30 s more" in lines[0]


def test_a_slow_first_epoch_is_corrected_after_the_second(monkeypatch):
    lines = run_epochs(monkeypatch, [50.0, 20.0, 20.0], total=5)
    assert len(lines) == 2
    assert "4 epoch(s) left, about 3 min 20 s more" in lines[0]
    assert "epoch 2 took 20.0 s; 3 epoch(s) left, about 1 min 00 s more" in lines[1]


def test_a_resumed_run_counts_the_epochs_left_from_where_it_resumed(monkeypatch):
    clock, lines = Clock(), []
    monkeypatch.setattr(trainer.time, "monotonic", clock)
    estimate = trainer.TimeEstimate(45, lines.append)
    estimate.on_epoch_begin(40)
    clock.now += 12.0
    estimate.on_epoch_end(40, {})
    assert lines == []  # printed after Keras' own line for the epoch, when the next one begins
    estimate.on_epoch_begin(41)
    assert "epoch 41 took 12.0 s; 4 epoch(s) left, about 48 s more" in lines[0]


def test_nothing_is_printed_after_the_last_epoch(monkeypatch):
    assert run_epochs(monkeypatch, [5.0], total=1) == []


def test_durations_read_as_people_write_them():
    assert trainer._duration(42.4) == "42 s"
    assert trainer._duration(125) == "2 min 05 s"
    assert trainer._duration(3 * 3600 + 7 * 60) == "3 h 07 min"
