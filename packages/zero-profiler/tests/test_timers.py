"""Wall-clock timers: accumulation, per-window averages, misuse, monitor events."""

from __future__ import annotations

import time

import pytest

from zero_profiler import TRAINING_TIMERS, WallClockTimers


def test_named_timers_average_per_window() -> None:
    timers = WallClockTimers()
    for _ in range(3):
        timers("forward").start()
        time.sleep(0.01)
        timers("forward").stop()
    timers("step").start()
    time.sleep(0.002)
    timers("step").stop()
    assert timers("forward").count == 3
    means = timers.means_ms(["forward", "step"], reset=False)
    assert 10 <= means["forward"] < 60
    assert 2 <= means["step"] < means["forward"]
    text = timers.log(["forward", "step"], print_fn=None)
    assert text.startswith("time (ms) | forward: ") and " | step: " in text
    assert timers("forward").count == 0  # the log reset the window
    assert timers.means_ms(["forward"]) == {"forward": 0.0}


def test_elapsed_is_the_window_total() -> None:
    timers = WallClockTimers(synchronize=False)
    t = timers("backward")
    for _ in range(2):
        t.start()
        time.sleep(0.005)
        t.stop()
    total = t.elapsed(reset=False)
    assert total == pytest.approx(2 * t.mean(reset=False))
    assert t.elapsed() >= 0.01 and t.elapsed() == 0.0


def test_misuse_is_an_error() -> None:
    timers = WallClockTimers()
    with pytest.raises(RuntimeError, match="stopped without start"):
        timers("step").stop()
    timers("step").start()
    with pytest.raises(RuntimeError, match="started twice"):
        timers("step").start()
    assert timers("step").running


def test_events_use_deepspeed_labels() -> None:
    timers = WallClockTimers()
    for name in TRAINING_TIMERS:
        timers(name).start()
        timers(name).stop()
    events = timers.events(step=64)
    assert [label for label, _, _ in events] == [
        "Train/Samples/elapsed_time_ms_forward",
        "Train/Samples/elapsed_time_ms_backward",
        "Train/Samples/elapsed_time_ms_backward_inner",
        "Train/Samples/elapsed_time_ms_backward_allreduce",
        "Train/Samples/elapsed_time_ms_step",
    ]
    assert all(step == 64 and ms >= 0 for _, ms, step in events)
