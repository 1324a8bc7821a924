"""What ``sweep`` returns: a leaderboard, learning-curve plots and the best trial's verified bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cellforge import bundle as _bundle
from cellforge import metrics as _m
from cellforge.data import prepare
from cellforge.spec import ModelSpec
from cellforge.train.checkpoint import final_weights
from cellforge.train.fit import finish
from cellforge.tune.progress import error_line, fmt, trial_number

PLOT_WIDTH_IN = 9.5  # a JupyterLab notebook column at the inline backend's 100 dpi: labels stay readable
PANEL_HEIGHT_IN = 3.2
CATEGORICAL_MAX = 8  # integer parameters with at most this many values get a categorical axis


class Sweep:
    """A finished (or interrupted) sweep.

    Attributes:
        name, path: the sweep's name and folder (``<storage>/<name>``).
        metric, mode: what ranks trials, and whether higher (``max``) or lower (``min``) is better.
        best: the best trial's number, parameters and last metrics (None if no trial reported).
        best_bundle: ``<path>/best/bundle``, built from the best trial's last checkpoint and verified.
    """

    def __init__(self, name: str, path: Path, params: list[str], metric: str, mode: str, grid, spec: ModelSpec,
                 prepared, raw_data=None, tracking=None):
        self.name, self.path, self.params, self.metric, self.mode = name, Path(path), params, metric, mode
        self._spec, self._prepared, self._raw = spec, prepared, raw_data
        self.trials = [trial_record(r, params, metric, i + 1) for i, r in enumerate(grid)]  # creation order
        self.trials.sort(key=lambda t: t["trial"])
        self._bundle: Path | None = None
        self.tracking = tracking  # the sweep's MLflow run (cellforge.tracking.Run), or None

    # tables -------------------------------------------------------------------------------
    def leaderboard(self):
        """A row per trial, best first: parameters, last metric, epochs run, status.

        Status is ``completed`` (every epoch, or the spec's own early stopping), ``early-stopped``
        (the scheduler stopped it) or ``error`` (with the message in an ``error`` column, there only
        when a trial failed). ``best_<metric>`` (the best epoch's value) is there only when it differs
        from the last epoch's for some trial."""
        import pandas as pd

        rows = [{"trial": t["trial"], **t["params"], self.metric: t["last"].get(self.metric),
                 f"best_{self.metric}": t["best"], "val_loss": t["last"].get("val_loss"), "epochs": t["epochs"],
                 "status": t["status"], "error": t["error"]} for t in self.trials]
        df = pd.DataFrame(rows).set_index("trial")
        if df.empty:
            return df
        if df["error"].isna().all():
            df = df.drop(columns="error")
        last, best = df[self.metric], df[f"best_{self.metric}"]
        if ((last == best) | (last.isna() & best.isna())).all():
            df = df.drop(columns=f"best_{self.metric}")
        return df.sort_values(self.metric, ascending=self.mode == "min", na_position="last")

    @property
    def trial_epochs(self) -> int:
        """Epochs run over all trials: the sweep's cost."""
        return sum(t["epochs"] for t in self.trials)

    @property
    def best(self) -> dict[str, Any] | None:
        ranked = [t for t in self.trials if t["last"].get(self.metric) is not None and t["status"] != "error"]
        if not ranked:
            return None
        sign = -1 if self.mode == "max" else 1
        t = min(ranked, key=lambda t: sign * t["last"][self.metric])
        return {"trial": t["trial"], "params": t["params"], "metrics": t["last"], "epochs": t["epochs"]}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        b = self.best
        best = (f"best trial {b['trial']}: {self.metric} {fmt(b['metrics'][self.metric])} "
                f"[{' '.join(f'{k}={fmt(v)}' for k, v in b['params'].items())}]") if b else "no trial reported"
        return (f"sweep {self.name}: {len(self.trials)} trials ("
                + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                + f"), {self.trial_epochs} trial-epochs; {best}")

    # the best model -------------------------------------------------------------------------
    @property
    def best_bundle(self) -> Path:
        """The best trial's bundle at ``<path>/best/bundle`` (test metrics included), built once and verified."""
        if self._bundle is not None:
            return self._bundle
        b = self.best
        if b is None:
            raise RuntimeError(f"sweep {self.name}: no trial reported {self.metric}, so there is no best "
                               "model; see leaderboard() for the errors")
        t = next(t for t in self.trials if t["trial"] == b["trial"])
        spec = self._spec.updated(**t["params"])
        prepared = self._prepared
        if self._raw is not None:
            spec, prepared = prepare(spec, *self._raw)  # (data, validation, test)
        if t["checkpoint"] is None:
            raise RuntimeError(f"sweep {self.name}: trial {t['trial']} left no checkpoint")
        with t["checkpoint"].as_directory() as d:
            weights, state = final_weights(Path(d))
        # the bundle's provenance names the trial's own run (a child of the sweep's)
        run_id = None if self.tracking is None else (self.tracking.child(t["trial_id"]) or self.tracking.run_id)
        path = finish(spec, prepared, weights, state, self.path / "best" / "bundle", self.path, verbose=False,
                      run_id=run_id).bundle
        _bundle.verify(path)
        if self.tracking is not None:  # the sweep's run keeps the model it chose
            self.tracking.log_bundle(path, {"cellforge.best_trial": str(t["trial"])})
        self._bundle = path
        return path

    # plots ----------------------------------------------------------------------------------
    def plot(self, params: list[str] | None = None):
        """Learning curves of every trial (the metric per epoch), then the metric against each parameter.

        Returns a matplotlib Figure not registered with pyplot: a notebook cell ending in
        ``sweep.plot()`` shows it once (pyplot's inline backend would show a pyplot figure a second
        time), and ``fig.savefig(...)`` saves it anywhere. Sized for a notebook column: at most three
        panels a row. A parameter with few integer values (``choice([32, 64])``), text values or a
        single value gets a categorical axis; a continuous one spanning more than 20x a log axis.
        """
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        params = params or self.params
        panels = 1 + len(params)
        cols = min(3, panels)
        rows = -(-panels // cols)
        fig = Figure(figsize=(PLOT_WIDTH_IN, PANEL_HEIGHT_IN * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes[panels:]:
            ax.remove()
        ax = axes[0]
        best = (self.best or {}).get("trial")
        for t in self.trials:
            h = t["history"]
            if h:
                ax.plot([r["epoch"] for r in h], [r.get(self.metric) for r in h], marker=".",
                        lw=2.5 if t["trial"] == best else 1, alpha=1 if t["trial"] == best else 0.6,
                        label=f"trial {t['trial']}" + (" (best)" if t["trial"] == best else ""))
        # epochs are whole numbers; min_n_ticks=1: when every trial ran one epoch, matplotlib's default of two
        # ticks fell back to fractional ones (0.945 ... 1.05) that ran together
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set(xlabel="epoch", ylabel=self.metric, title="learning curves")
        if len(self.trials) <= 8:
            ax.legend(fontsize=7)
        for ax, p in zip(axes[1:], params):
            pts = [(t["params"].get(p), t["last"].get(self.metric), t["status"]) for t in self.trials
                   if t["last"].get(self.metric) is not None]
            xs = [x for x, _, _ in pts]
            labels = categories(xs)
            for status, marker in (("completed", "o"), ("early-stopped", "x")):
                sel = [(x, y) for x, y, s in pts if s == status]
                if sel:
                    ax.scatter([labels.index(x) if labels else x for x, _ in sel], [y for _, y in sel],
                               marker=marker, label=status)
            if labels:
                ax.set_xticks(range(len(labels)), [fmt(x) for x in labels])
                ax.set_xlim(-0.5, len(labels) - 0.5)
            elif xs and min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
            else:  # matplotlib's default 9 bins put five labels like '0.00125' into a third of a column: they ran together
                ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.set(xlabel=p, ylabel=f"last {self.metric}")
            ax.legend(fontsize=7)
        return fig

    def __repr__(self) -> str:
        return f"Sweep({self.name!r}, {len(self.trials)} trials, metric={self.metric!r})"


def categories(xs: list[Any]) -> list[Any] | None:
    """The sorted distinct values of a parameter when its axis is categorical, else None: text or
    booleans, a single value, or at most ``CATEGORICAL_MAX`` integers (a ``choice`` of sizes).

    >>> categories([64, 32, 64]), categories(["gru", "lstm"]), categories([0.003]), categories([0.1, 0.02])
    ([32, 64], ['gru', 'lstm'], [0.003], None)
    """
    distinct = set(xs)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in distinct)
    if not numeric:
        return sorted(distinct, key=str)
    if len(distinct) <= 1 or (all(isinstance(x, int) for x in distinct) and len(distinct) <= CATEGORICAL_MAX):
        return sorted(distinct)
    return None


def trial_record(result, params: list[str], metric: str, place: int) -> dict[str, Any]:
    """One trial's record from a Tune Result: parameters, per-epoch history, status and error."""
    last = dict(result.metrics or {})
    df = result.metrics_dataframe
    keep = ["epoch", "loss", "lr", "time_s"] + [c for c in (df.columns if df is not None else [])
                                                 if str(c).startswith("val_")]
    history = [] if df is None or df.empty else df[[c for c in keep if c in df.columns]].to_dict("records")
    values = [r.get(metric) for r in history if r.get(metric) is not None and not _nan(r.get(metric))]
    best = (max(values) if _m.mode_of(metric) == "max" else min(values)) if values else None
    error = None
    if result.error is not None:
        error = error_line(result.error)
    status = "error" if error else ("completed" if last.get("complete") else "early-stopped" if history else "not run")
    tid = last.get("trial_id") or Path(result.path).name
    config = result.config or _params_file(result.path)
    return {"trial": trial_number(tid, place), "params": {p: config.get(p) for p in params},
            "last": {k: v for k, v in last.items() if k in ("epoch", "loss", "val_loss") or k.startswith("val_")},
            "best": best, "epochs": len(history), "status": status, "error": error, "history": history,
            "checkpoint": result.checkpoint, "trial_id": tid}


def _params_file(trial_dir: str) -> dict[str, Any]:
    """A trial's parameters as Tune wrote them in its folder: a restored sweep's errored trial comes
    back without its config (Ray 2.60)."""
    try:
        return json.loads((Path(trial_dir) / "params.json").read_text())
    except (OSError, ValueError):
        return {}


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)
