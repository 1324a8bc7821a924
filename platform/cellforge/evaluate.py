"""Use a saved bundle on new data: ``evaluate`` (data with targets -> metrics) and
``predict_file`` (an input file -> a predictions file), as the job-file steps do.

    >>> import cellforge as cf
    >>> sorted(evaluate(bundle, cf.datasets.load("digits")))     # a digits classifier's bundle
    ['test_accuracy', 'test_loss', 'test_macro_f1']
    >>> import json; _ = open("images.json", "w").write(json.dumps(images[:3].tolist()))
    >>> predict_file(bundle, "images.json", "predictions.csv")["rows"]
    3
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cellforge import decode
from cellforge import metrics as _metrics
from cellforge.data import Series, read_table, split_indices, to_source
from cellforge.data.preprocess import split_parts
from cellforge.errors import SpecError
from cellforge.model import Model, load
from cellforge.train.seq2seq_eval import score as seq2seq_score

SPLITS = ("test", "val", "train", "all")


def evaluate(bundle: str | Path, data: Any, split: str = "test", framework: str | None = None) -> dict[str, float]:
    """Metrics of a bundle on ``data``, preprocessed with the bundle's own (saved) preprocessing.

    Args:
        bundle: a bundle directory.
        data: anything ``fit`` accepts: (X, y), a built-in data set, a DataFrame, a CSV/Parquet path.
        split: ``test`` (default), ``val`` or ``train`` re-create the split the bundle was trained
            with (same fractions and seed), so ``test`` on the training data set scores held-out
            examples only; ``all`` scores every example.
        framework: runtime to predict with (default: the one it was trained in).

    Returns:
        ``{split}_{metric}`` values (e.g. ``test_accuracy``), plus ``naive_rmse`` for forecasts.

    Raises:
        SpecError: the data does not fit the bundle (columns, features, unseen labels).
    """
    if split not in SPLITS:
        raise SpecError([("split", f"expected one of {list(SPLITS)}, got {split!r}")], what="evaluate arguments")
    model = load(bundle, framework)
    spec, pre = model.spec, model.preprocessor
    src = to_source(data, spec)
    if spec.task == "anomaly":
        return _anomaly(model, src, split)
    extra: dict[str, float] = {}
    if isinstance(src, Series):
        x, lengths, y, naive = _series_arrays(model, src, split)
        extra["naive_rmse"] = naive
    else:
        idx = _indices(len(src.x), spec, split, shuffle=True, src=src)
        x, lengths = pre.transform([src.x[i] for i in idx])
        try:
            y = pre.encode_y([src.y[i] for i in idx], lengths)
        except KeyError as e:
            raise SpecError([("data", f"label {e.args[0]!r} is not one the bundle knows: "
                                      f"{pre.state.get('classes')}")], what="data") from None
    if spec.task == "seq2seq":  # decoded as spec.decode says, scored by sacrebleu and rouge-score
        m = seq2seq_score(spec, decode.runtime(model.framework), model.net, {"x": x, "lengths": lengths, "y": y},
                  pre.state["target"])[0]
        return {f"{split}_{k}": v for k, v in m.items()}
    if spec.task == "transcribe":  # greedy transcripts: CER and WER by jiwer
        m = _metrics.transcribe_finalize(_metrics.transcribe_stats(pre.state["target"], model.outputs(x, lengths),
                                                                   lengths, y))
        return {f"{split}_{k}": v for k, v in m.items()}
    m = _metrics.score(spec, model.outputs(x, lengths), y, pre.state.get("target_scaler"))
    return {**{f"{split}_{k}": v for k, v in m.items()}, **extra}


def _anomaly(model: Model, src, split: str) -> dict[str, float]:
    """Detection metrics (cellforge.metrics.detection) of an anomaly model on a labelled series: over
    every step (``all``), or the steps of the bundle's own time-ordered split of it."""
    if not isinstance(src, Series) or src.labels is None:
        raise SpecError([("data", "an anomaly model is evaluated on a series with labels: "
                                  "cf.Series(values, labels=...), one 0/1 per step")], what="data")
    found = model.detect(src)
    steps = np.arange(len(found.scores))
    if split != "all":
        warmup = model.preprocessor.state["anomaly"]["warmup"]
        steps = _indices(len(steps) - warmup, model.spec, split, shuffle=False) + warmup
    m = _metrics.detection(found.scores[steps], src.labels[steps], found.threshold, found.window)
    return {f"{split}_{k}": v for k, v in m.items()}


def _indices(n: int, spec, split: str, shuffle: bool, src=None) -> np.ndarray:
    if split == "all":
        return np.arange(n)
    t = spec.training
    # sequences split as prepare splits them: official splits kept, else by group when the data has groups
    # (speech: its voices; dates: its dates), else at random
    idx = (split_indices(n, t.val_fraction, t.test_fraction, t.seed, shuffle) if src is None
           else split_parts(src, t.val_fraction, t.test_fraction, t.seed))[split]
    if not len(idx):
        raise SpecError([("split", f"the {split!r} split of this data is empty; use split: all")], what="data")
    return idx


def _series_arrays(model: Model, src: Series, split: str):
    """Windows of a series, as in training: (x, lengths, scaled targets, naive-forecast RMSE)."""
    s = model.preprocessor.state
    values = _columns_of(src, s["columns"])
    window, horizon = s["window"], s["horizon"]
    tcols = [s["columns"].index(c) for c in s["targets"]]
    n = len(values) - window - horizon + 1
    if n < 1:
        raise SpecError([("data", f"the series needs at least window + horizon = {window + horizon} steps, "
                                  f"got {len(values)}")], what="data")
    idx = _indices(n, model.spec, split, shuffle=False)
    xs = np.stack([values[i: i + window] for i in idx])
    ys = np.stack([values[i + window: i + window + horizon][:, tcols] for i in idx])
    x, lengths = model.preprocessor.transform(list(xs))
    y = model.preprocessor.encode_y(ys.reshape(len(ys), -1))
    naive = np.repeat(xs[:, -1:, tcols], horizon, axis=1)
    return x, lengths, y, float(np.sqrt(np.mean((naive - ys) ** 2)))


def _columns_of(src: Series, columns: list[str]) -> np.ndarray:
    if list(src.columns) == list(columns):
        return src.values
    missing = [c for c in columns if c not in src.columns]
    if missing:
        raise SpecError([("data", f"the bundle was trained on columns {columns}; the data lacks {missing} "
                                  f"(it has {list(src.columns)})")], what="data")
    return src.values[:, [list(src.columns).index(c) for c in columns]]


def predict_file(bundle: str | Path, input: str | Path, output: str | Path, *, columns: list[str] | None = None,
                 group: str | None = None, framework: str | None = None) -> dict[str, Any]:
    """Predict for every input in a file and write the predictions to ``output`` (.csv or .json).

    Inputs by task:
        forecast: a table with the bundle's series columns; forecasts ``horizon`` steps after its
            last row (one output row per step), or per ``group`` when given.
        text: a table with a text column (``columns[0]``, else the first text column) or a JSON list
            of strings; one output row per input.
        numeric sequences: a table whose rows form sequences by ``group`` (default the spec's
            ``input.group``), features from ``columns`` (default every other numeric column); or a
            JSON list of sequences. One output row per sequence.

    Returns:
        ``{"output": path, "rows": n}``.
    """
    input, output = Path(input), Path(output)
    if output.suffix not in (".csv", ".json"):
        raise SpecError([("output", f"expected a .csv or .json file, got {output.name!r}")], what="predict arguments")
    model = load(bundle, framework)
    rows = _predict_rows(model, input, columns, group or model.spec.input.group)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".csv":
        import pandas as pd

        pd.DataFrame(rows).to_csv(output, index=False)
    else:
        output.write_text(json.dumps(rows, indent=1, default=_plain))
    return {"output": str(output.resolve()), "rows": len(rows)}


def _predict_rows(model, path: Path, columns, group) -> list[dict[str, Any]]:
    spec, state = model.spec, model.preprocessor.state
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SpecError([("input", f"{path.name} is not valid JSON ({e})")], what="input") from None
        raw = raw.get("inputs") if isinstance(raw, dict) else raw
        if not isinstance(raw, list):
            raise SpecError([("input", "a JSON input is a list of inputs or {'inputs': [...]}")], what="input")
        if spec.task == "forecast":  # one series: a list of values, or of rows of values
            return _rows(model, [None], [raw], None)
        return _rows(model, list(range(len(raw))), raw, None)
    df = read_table(path)
    groups = _groups(df, group)
    if spec.task == "forecast":
        missing = [c for c in state["columns"] if c not in df.columns]
        if missing:
            raise SpecError([("input", f"{path.name} lacks the bundle's series columns {missing}; "
                                       f"it has {list(df.columns)}")], what="input")
        seqs = [g[state["columns"]].to_numpy(np.float64) for _, g in groups]
        return _rows(model, [k for k, _ in groups], seqs, group)
    if state["input_type"] == "text":
        col = (columns or [c for c in df.columns if df[c].dtype == object] or [None])[0]
        if col not in df.columns:
            raise SpecError([("columns", f"name the text column; {path.name} has {list(df.columns)}")], what="input")
        return _rows(model, df[col].astype(str).tolist(), df[col].astype(str).tolist(), col)
    if group is None:
        raise SpecError([("group", "numeric sequences in a table need a column that groups rows into "
                                   "sequences (the step's 'group' or the spec's input.group)")], what="input")
    target = spec.input.target
    skip = {group, *([target] if isinstance(target, str) else target or [])}
    feats = columns or [c for c in df.columns if c not in skip and np.issubdtype(df[c].dtype, np.number)]
    missing = [c for c in feats if c not in df.columns]
    if missing:
        raise SpecError([("columns", f"{missing} not in {path.name}; it has {list(df.columns)}")], what="input")
    return _rows(model, [k for k, _ in groups], [g[feats].to_numpy(np.float64) for _, g in groups], group)


def _groups(df, group):
    if group is None:
        return [(None, df)]
    if group not in df.columns:
        raise SpecError([("group", f"column {group!r} not in the input; it has {list(df.columns)}")], what="input")
    return list(df.groupby(group, sort=False))


def _rows(model, keys: list, inputs: list, key_name: str | None) -> list[dict[str, Any]]:
    spec, state = model.spec, model.preprocessor.state
    out = model.predict_details(inputs)
    rows = []
    name = key_name or "input"
    for i, key in enumerate(keys):
        if spec.task == "forecast":
            v = np.asarray(out["values"][i]).reshape(spec.horizon, -1)
            for step in range(spec.horizon):
                row = {name: key} if key_name else {}
                row.update({"step": step + 1, **{c: float(v[step, j]) for j, c in enumerate(state["targets"])}})
                rows.append(row)
        elif "values" in out:
            v = np.atleast_1d(np.asarray(out["values"][i]))
            rows.append({name: key, **({"prediction": float(v[0])} if v.size == 1 else
                                       {f"prediction_{j}": float(x) for j, x in enumerate(v)})})
        else:
            row = {name: key, "prediction": out["labels"][i]}
            if spec.task == "classify":
                row.update({f"p_{c}": float(p) for c, p in zip(state["classes"], out["probabilities"][i])})
            rows.append(row)
    return rows


def _plain(v):
    return v.item() if hasattr(v, "item") else v.tolist() if hasattr(v, "tolist") else str(v)
