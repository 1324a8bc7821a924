"""Sweep progress: one table updated in place in a notebook, a few plain lines in a terminal.

Ray Tune's own table is switched off (``verbose=0`` and the ``Quiet`` reporter). ``Progress`` keeps each trial's epochs and
shows them; Tune is given a ``Relay`` that forwards its hooks, by the sweep's name, to the
``Progress`` live in this process. Tune pickles its callbacks with the experiment and a resumed
sweep gets those back, so the relay holds only the name: a resumed sweep shows on the current
display (terminal or notebook, verbose or not) without touching Tune's restored RunConfig.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any

from ray import tune

from cellforge.log import log

TERMINAL_HEARTBEAT_S = 60  # a status line at most this often while trials run, so a terminal never looks stuck
NOTEBOOK_REFRESH_S = 1.0  # the notebook table redraws at most this often
_LIVE: dict[str, Progress] = {}  # sweep name -> the display of that sweep while it runs in this process


def trial_number(trial_id: str, fallback: int | None = None) -> int:
    """1-based. Random and grid search number trials '<experiment>_00003' (the 4th); a searcher such as
    Optuna gives random ids, and then ``fallback`` (the trial's place in creation order) is used."""
    tail = trial_id.rsplit("_", 1)[-1]
    if "_" in trial_id and tail.isdigit():
        return int(tail) + 1
    return fallback if fallback is not None else 0


def _number(trial) -> int:
    """A running Tune Trial's number: a searcher's trials carry their 1-based count in the tag ('3_cell=gru')."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return trial_number(trial.trial_id, int(head) if head.isdigit() else None)


def in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def error_line(err: BaseException | str) -> str:
    """The worker's own error line (e.g. 'FloatingPointError: training loss became nan ...') out of the
    traceback text that Ray and Tune wrap around it."""
    text = str(err).strip().splitlines()
    for line in reversed(text):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~")) and ("Error" in line or "Exception" in line):
            return line[:300]
    return (text[-1] if text else type(err).__name__)[:300]


class Progress(tune.Callback):
    """Shows a sweep as it runs. ``params``: the space's field names; ``metric``/``mode``: what ranks trials."""

    def __init__(self, name: str, params: list[str], metric: str, mode: str, total: int, epochs: int,
                 notebook: bool | None = None, verbose: bool = True):
        self.name, self.params, self.metric, self.mode = name, params, metric, mode
        self.total, self.epochs = total, epochs
        self.notebook = in_notebook() if notebook is None else notebook
        self.verbose = verbose  # False: no terminal lines (the notebook table still draws)
        self.rows: dict[str, dict[str, Any]] = {}
        self.handle = None
        self.last_draw = self.last_beat = 0.0
        self.best: float | None = None
        self.status = "starting"  # the line above the table: what the sweep is doing now

    def say(self, status: str) -> None:
        """Change the status line (Ray starting, trials' workers starting, ...) and show it now."""
        self.status = status
        self._draw(force=True)

    def earlier(self, trials: list[dict[str, Any]]) -> None:
        """The trials a resumed sweep had run before (``result.trial_record`` records): their rows in the table,
        their metric in 'best so far'. A finished sweep's resume has no new trial, and the table still
        shows every trial."""
        for t in trials:
            value = t["last"].get(self.metric)
            self.seen([value] if t["status"] != "error" else [])
            self.rows[f"earlier-{t['trial']}"] = {"trial": t["trial"], **{p: t["params"].get(p) for p in self.params},
                                                  "status": t["status"], "epochs": t["epochs"], self.metric: value}

    def seen(self, values: list[Any]) -> None:
        """Metric values reported before this run (a resumed sweep's earlier trials), for 'best so far'."""
        for v in values:
            if isinstance(v, (int, float)) and v == v and (self.best is None or (v > self.best if self.mode == "max" else v < self.best)):
                self.best = v

    # the hooks Relay forwards -------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "starting workers"  # 'running' once its first epoch ends
        self.status = "running"
        self._draw(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row.update(status="running", epochs=result.get("epoch"), **{self.metric: result.get(self.metric)})
        self._draw(force=True)  # every epoch as it ends: a trial reports one every second or more
        self._heartbeat()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        row = self._row(trial)
        row["status"] = "completed" if last.get("complete") else "early-stopped"
        value = last.get(self.metric)
        mark = ""
        if value is not None and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best, mark = value, "  (best so far)"
        self._line(f"trial {_number(trial)}/{self.total} {row['status']} after "
                   f"{last.get('epoch', 0)}/{self.epochs} epochs: {self.metric} {fmt(value)}{mark}  "
                   f"[{self._params(trial)}]")
        self._draw(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row["status"] = "error"
        err = None
        try:  # Tune wrote the traceback's text to the trial's local folder just before this hook
            if trial.error_file and os.path.exists(trial.error_file):
                with open(trial.error_file) as f:
                    err = f.read()
        except OSError:  # unreadable: the leaderboard still has it
            pass
        reason = error_line(err) if err else "see the leaderboard"
        self._line(f"trial {_number(trial)}/{self.total} error: {reason[:200]}  [{self._params(trial)}]")
        self._draw(force=True)

    def on_experiment_end(self, trials, **info):
        self.status = "finished"
        self._draw(force=True)

    # display ------------------------------------------------------------------------------
    def _row(self, trial) -> dict[str, Any]:
        n = _number(trial)
        if trial.trial_id not in self.rows:
            self.rows.pop(f"earlier-{n}", None)  # a resumed trial: its row from before continues here
            self.rows[trial.trial_id] = {"trial": n,
                                         **{p: trial.config.get(p) for p in self.params},
                                         "status": "pending", "epochs": 0, self.metric: None}
        return self.rows[trial.trial_id]

    def _params(self, trial) -> str:
        return " ".join(f"{p}={fmt(trial.config.get(p))}" for p in self.params)

    def _line(self, text: str) -> None:
        if not self.notebook:
            if self.verbose:
                log.info(text)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.notebook or now - self.last_beat < TERMINAL_HEARTBEAT_S:
            return
        self.last_beat = now
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        self._line(f"sweep {self.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                   + (f"; best {self.metric} {fmt(self.best)}" if self.best is not None else ""))

    def _draw(self, force: bool = False) -> None:
        if not self.notebook:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < NOTEBOOK_REFRESH_S:
            return
        self.last_draw = now
        from IPython.display import display

        view = Table(self._headline(), sorted(self.rows.values(), key=lambda r: r["trial"]))
        if self.handle is None:
            self.handle = display(view, display_id=True)
        else:
            self.handle.update(view)

    def _headline(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        done = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = f"; best {self.metric} {fmt(self.best)}" if self.best is not None else ""
        return f"sweep {self.name}: {self.status}" + (f" ({done} of {self.total} trials)" if done else "") + best


class Table:
    """What the notebook shows: a status line, then a row per trial (none yet while Ray starts)."""

    def __init__(self, headline: str, rows: list[dict[str, Any]]):
        self.headline, self.rows = headline, [dict(r) for r in rows]  # as they are now

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("trial") if self.rows else None

    def _repr_html_(self) -> str:
        import html

        df = self.frame()
        return f"<p><b>{html.escape(self.headline)}</b></p>" + (df.to_html() if df is not None else "")

    def __repr__(self) -> str:
        df = self.frame()
        return self.headline + ("\n" + df.to_string() if df is not None else "")


class Quiet(tune.ProgressReporter):
    """Tune's progress reporter for a sweep: reports nothing, ``Progress`` shows the sweep. In a notebook
    Tune's default (``JupyterNotebookReporter``) clears the cell's output as it is created, which wiped
    the status line and table drawn before the run (and the 'resuming' line), and left an empty HTML
    output. Tune pickles it with the experiment, so a resumed sweep keeps it."""

    def should_report(self, trials, done=False):
        return False

    def report(self, trials, done, *sys_info):
        pass


class Relay(tune.Callback):
    """The Tune callback a sweep registers: forwards Tune's hooks to ``live(name)``'s Progress, if any."""

    def __init__(self, name: str):
        self.name = name

    def on_trial_start(self, iteration, trials, trial, **info):
        if p := _LIVE.get(self.name):
            p.on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if p := _LIVE.get(self.name):
            p.on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if p := _LIVE.get(self.name):
            p.on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        if p := _LIVE.get(self.name):
            p.on_trial_error(iteration, trials, trial, **info)

    def on_experiment_end(self, trials, **info):
        if p := _LIVE.get(self.name):
            p.on_experiment_end(trials, **info)


@contextmanager
def live(name: str, progress: Progress):
    """Show sweep ``name``'s progress on ``progress`` while the block runs (``tuner.fit()``)."""
    _LIVE[name] = progress
    try:
        yield progress
    finally:
        _LIVE.pop(name, None)
