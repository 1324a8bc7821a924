"""``train.fit.Stopwatch``: a fit's seconds by phase, the Ray Train run split by what its loop stamped."""

import time

import pytest

from cellforge.train.fit import Stopwatch


def test_laps_go_to_their_phase_in_the_order_they_ran():
    clock = Stopwatch()
    time.sleep(0.02)
    clock.lap("prepare")
    clock.lap("ray")
    time.sleep(0.01)
    clock.lap("prepare")  # a phase that comes back adds up
    assert list(clock.phases) == ["prepare", "ray"]
    assert clock.phases["prepare"] == pytest.approx(0.03, abs=0.02)
    assert clock.outside() == pytest.approx(sum(clock.phases.values()))


def test_a_train_run_is_split_by_the_loops_stamps_and_this_starts_epochs():
    clock = Stopwatch()
    began = time.time() - 10.0  # the run started 10 s ago; its loop 3 s in, first epoch 1.5 s later
    state = {"timing": {"loop_start": began + 3.0, "setup_s": 1.5}, "starts": [0, 2],
             "history": [{"time_s": 9.0}, {"time_s": 9.0}, {"time_s": 2.0}, {"time_s": 2.5}]}
    clock.train_run(state, began)
    t = clock.phases
    assert t["workers"] == pytest.approx(3.0, abs=0.01) and t["setup"] == 1.5
    assert t["epochs"] == 4.5  # the epochs of the last start only: a resumed run's earlier ones ran before
    assert t["checkpoints"] == pytest.approx(1.0, abs=0.05)
    assert clock.outside() == pytest.approx(5.5, abs=0.05)
    assert clock.line().startswith("outside epochs 5.5 s: workers 3.0, setup 1.5, checkpoints 1.0")


def test_a_run_without_stamps_counts_its_time_outside_the_epochs():
    clock = Stopwatch()
    clock.train_run({"history": [{"time_s": 1.0}]}, time.time() - 2.0)  # an older checkpoint: no timing
    assert clock.phases["workers"] == 0 and clock.phases["epochs"] == 1.0
    assert clock.phases["checkpoints"] == pytest.approx(1.0, abs=0.05)
