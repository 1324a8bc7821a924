"""What a sweep shows in a notebook: the live table (also when a resume has no new trial), the
leaderboard's columns and the plot's axes. Trials are Tune-Result-shaped records, no Ray."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from cellforge.spec import ModelSpec
from cellforge.tune.progress import Progress, Table
from cellforge.tune.result import PLOT_WIDTH_IN, Sweep


def result(n: int, cell: str, hidden: int, lr: float, accs: list[float], complete=True, error=None):
    history = pd.DataFrame({"epoch": range(1, len(accs) + 1), "loss": [1.0] * len(accs), "val_accuracy": accs,
                            "val_loss": [0.5] * len(accs)})
    last = {"epoch": len(accs), "val_accuracy": accs[-1], "val_loss": 0.5, "complete": complete,
            "trial_id": f"abc_{n - 1:05d}"} if accs else {}
    return SimpleNamespace(metrics=last, metrics_dataframe=history if accs else None, error=error,
                           path=f"/x/abc_{n - 1:05d}", checkpoint=None,
                           config={"cell": cell, "hidden_size": hidden, "training.lr": lr})


PARAMS = ["cell", "hidden_size", "training.lr"]


def sweep(results) -> Sweep:
    return Sweep("s", "/x", PARAMS, "val_accuracy", "max", results, ModelSpec(task="classify"), None)


class Shown:
    """IPython's display, recorded: what the notebook would show."""

    def __init__(self, monkeypatch):
        import IPython.display

        self.views: list[Table] = []
        monkeypatch.setattr(IPython.display, "display", self.display)

    def display(self, obj, display_id=None):
        self.views.append(obj)
        return SimpleNamespace(update=self.views.append)


def test_a_resumed_finished_sweep_shows_its_trials_not_a_traceback(monkeypatch):
    shown = Shown(monkeypatch)
    p = Progress("s", PARAMS, "val_accuracy", "max", total=2, epochs=2, notebook=True)
    p.say("starting Ray")
    p.on_experiment_end([])  # nothing ran yet: a status line, no table, no KeyError
    assert repr(shown.views[-1]) == "sweep s: finished" and shown.views[-1].frame() is None
    s = sweep([result(1, "gru", 32, 0.01, [0.5, 0.8]), result(2, "lstm", 32, 0.003, [0.4])])
    p.earlier(s.trials)
    p.on_experiment_end([])  # a finished sweep's resume: no hook but this one
    view = shown.views[-1]
    assert list(view.frame().index) == [1, 2] and list(view.frame().status) == ["completed", "completed"]
    assert "best val_accuracy 0.8" in view.headline and "<table" in view._repr_html_()


def test_the_status_line_changes_while_trials_start_and_each_epoch_shows(monkeypatch):
    shown = Shown(monkeypatch)
    p = Progress("s", ["cell"], "val_accuracy", "max", total=1, epochs=2, notebook=True)
    p.say("starting Ray")
    trial = SimpleNamespace(trial_id="abc_00000", config={"cell": "gru"}, experiment_tag="1_cell=gru")
    p.on_trial_start(0, [], trial)
    p.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.5})
    p.on_trial_result(0, [], trial, {"epoch": 2, "val_accuracy": 0.7})  # straight after: still drawn
    heads = [v.headline for v in shown.views]
    assert heads[0] == "sweep s: starting Ray" and "1 starting workers" in heads[1]
    assert [v.frame().epochs.iloc[0] for v in shown.views[2:]] == [1, 2]


def test_a_resumed_trial_replaces_its_earlier_row(monkeypatch):
    Shown(monkeypatch)
    p = Progress("s", PARAMS, "val_accuracy", "max", total=2, epochs=2, notebook=True)
    p.earlier(sweep([result(1, "gru", 32, 0.01, [0.5])]).trials)
    p.on_trial_result(0, [], SimpleNamespace(trial_id="abc_00000", config={"cell": "gru"}, experiment_tag=""),
                      {"epoch": 2, "val_accuracy": 0.6})
    assert [r["trial"] for r in p.rows.values()] == [1]


def test_leaderboard_columns_only_when_they_say_something():
    board = sweep([result(1, "gru", 32, 0.01, [0.5, 0.8]), result(2, "lstm", 64, 0.003, [0.6, 0.7])]).leaderboard()
    assert "error" not in board and "best_val_accuracy" not in board  # no error; best == last everywhere
    assert list(board.index) == [1, 2]
    board = sweep([result(1, "gru", 32, 0.01, [0.9, 0.8]),
                   result(2, "lstm", 64, 0.003, [], error="FloatingPointError: nan")]).leaderboard()
    assert board.loc[2, "error"] == "FloatingPointError: nan" and board.loc[1, "best_val_accuracy"] == 0.9


def test_plot_fits_a_notebook_column_with_integer_epochs_and_categorical_axes():
    from matplotlib.figure import Figure

    s = sweep([result(1, "gru", 32, 0.01, [0.5, 0.6, 0.8]), result(2, "lstm", 32, 0.003, [0.4, 0.5], complete=False)])
    fig = s.plot()
    assert isinstance(fig, Figure) and fig.canvas.manager is None  # not a pyplot figure: shown once
    assert fig.get_size_inches()[0] == PLOT_WIDTH_IN and len(fig.axes) == 4
    fig.canvas.draw()
    curves, cell, hidden, lr = fig.axes
    assert all(t == int(t) for t in curves.get_xticks())
    assert [t.get_text() for t in cell.get_xticklabels()] == ["gru", "lstm"]
    assert [t.get_text() for t in hidden.get_xticklabels()] == ["32"]  # one value: one category
    assert hidden.get_xlim() == (-0.5, 0.5)
    assert lr.get_xscale() == "linear" and not [t.get_text() for t in lr.get_xticklabels() if t.get_text() == "0"]


@pytest.mark.parametrize("n_params, rows", [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_plot_wraps_panels_three_a_row(n_params, rows):
    s = sweep([result(1, "gru", 32, 0.01, [0.5])])
    fig = s.plot(params=(PARAMS * 2)[:n_params])
    assert len(fig.axes) == 1 + n_params
    assert fig.get_size_inches()[1] == pytest.approx(3.2 * rows)


def shown_ticks(fig, ax):
    """The x tick labels ``ax`` shows, drawn as the inline backend draws them (Agg): [(text, box)]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.xaxis.get_major_ticks() if lo <= t.get_loc() <= hi and t.label1.get_text()]
    return sorted(((t.label1.get_text(), t.label1.get_window_extent(renderer)) for t in ticks), key=lambda t: t[1].x0)


@pytest.mark.parametrize("lrs", [(0.00112, 0.00225), (0.0031, 0.0192), (0.001, 0.019), (2.0, 3.0)])
def test_plot_tick_labels_of_a_continuous_parameter_do_not_overlap(lrs):
    """A loguniform lr spanning less than 20x keeps a linear axis: its labels ('0.00125') must not run
    into each other in a third of a notebook column (seen in notebook 02 in the browser)."""
    s = sweep([result(i + 1, "gru", 32, lr, [0.5]) for i, lr in enumerate(lrs)])
    fig = s.plot()
    ticks = shown_ticks(fig, fig.axes[3])
    assert len(ticks) >= 2
    assert all(a.x1 < b.x0 for (_, a), (_, b) in zip(ticks, ticks[1:])), [text for text, _ in ticks]


def test_plot_of_one_epoch_trials_has_one_whole_epoch_tick():
    s = sweep([result(1, "gru", 32, 0.01, [0.5]), result(2, "lstm", 32, 0.003, [0.4], complete=False)])
    fig = s.plot()
    assert [text for text, _ in shown_ticks(fig, fig.axes[0])] == ["1"]
