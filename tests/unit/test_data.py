"""Data sources, splits, preprocessing fitted on the training split only, and raw-input prediction."""

import numpy as np
import pandas as pd
import pytest

import cellforge as cf
from cellforge.data import prepare
from cellforge.errors import SpecError


def test_digits_are_8_step_sequences():
    spec, p = prepare(cf.ModelSpec(task="classify"), cf.datasets.load("digits"))
    assert spec.input.num_features == 8 and spec.num_classes == 10
    sizes = {k: len(v["y"]) for k, v in p.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["train"] > 1200


def test_scaler_is_fitted_on_the_training_split_only():
    x = np.zeros((100, 3, 1), np.float32)
    x[:, :, 0] = np.arange(100)[:, None]
    spec = cf.ModelSpec(task="regress", training={"val_fraction": 0.2, "test_fraction": 0.2})
    spec, p = prepare(spec, (x, np.arange(100.0)))
    train_ids = p.splits["train"]["x"][:, 0, 0]
    # train rows scale to mean 0 / std 1 by themselves; the others do not enter the statistics
    assert abs(train_ids.mean()) < 1e-5 and abs(train_ids.std() - 1) < 1e-4


def test_adding_problem_targets():
    d = cf.datasets.load("adding", n=50, length=20, seed=1)
    assert d.x.shape == (50, 20, 2) and (d.x[..., 1].sum(1) == 2).all()
    np.testing.assert_allclose(d.y, (d.x[..., 0] * d.x[..., 1]).sum(1), rtol=1e-6)


def test_variable_length_text_vocabulary_from_training_split():
    texts = ["good movie", "bad film", "great good fun", "awful bad", "good", "bad bad bad"] * 10
    labels = ["pos", "neg", "pos", "neg", "pos", "neg"] * 10
    spec, p = prepare(cf.ModelSpec(task="classify", input={"type": "text"}), (texts, labels))
    vocab = p.preprocessor.state["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and "good" in vocab
    x, lengths = p.preprocessor.transform(["good movie never seen", "bad"])
    assert lengths.tolist() == [4, 1] and x[0, 3] == 1 and x[1, 1] == 0  # unknown -> <unk>, padding -> 0
    assert p.preprocessor.state["classes"] == ["neg", "pos"]


def test_sunspots_windows_and_naive_baseline():
    spec = cf.ModelSpec(task="forecast", horizon=2, input={"window": 10})
    spec, p = prepare(spec, cf.datasets.load("sunspots"))
    assert p.splits["train"]["x"].shape[1:] == (10, 1) and p.splits["train"]["y"].shape[1] == 2
    assert p.baseline["naive_rmse"] > 0
    # chronological split: test windows come after every training window
    assert len(p.raw_test) == len(p.splits["test"]["y"])


@pytest.mark.parametrize("kind", ["frame", "csv", "parquet"])
def test_table_sources(tmp_path, kind):
    s = cf.datasets.load("sunspots")
    df = pd.DataFrame({"year": np.arange(len(s.values)), "spots": s.values[:, 0]})
    src = df
    if kind == "csv":
        src = tmp_path / "s.csv"
        df.to_csv(src, index=False)
    elif kind == "parquet":
        src = tmp_path / "s.parquet"
        df.to_parquet(src)
    spec = cf.ModelSpec(task="forecast", input={"columns": ["spots"], "window": 8})
    spec, p = prepare(spec, src)
    assert spec.input.num_features == 1 and len(p.splits["test"]["y"]) > 0


def test_grouped_rows_become_sequences():
    df = pd.DataFrame({"id": [1, 1, 1, 2, 2, 3, 3, 3, 3] * 4, "a": np.arange(36.0), "b": np.ones(36),
                       "label": ["x", "x", "x", "y", "y", "x", "x", "x", "x"] * 4})
    df["id"] = df["id"] + np.repeat(np.arange(4) * 10, 9)
    spec = cf.ModelSpec(task="classify", input={"group": "id", "target": "label", "columns": ["a", "b"]},
                        training={"val_fraction": 0.0, "test_fraction": 0.25})
    spec, p = prepare(spec, df)
    assert spec.input.num_features == 2 and sorted(p.splits["train"]["lengths"].tolist() + p.splits["test"]["lengths"].tolist()) == sorted([3, 2, 4] * 4)


def test_horizon_longer_than_series_is_refused():
    with pytest.raises(SpecError) as e:
        prepare(cf.ModelSpec(task="forecast", horizon=400, input={"window": 10}), cf.datasets.load("sunspots"))
    assert e.value.problems[0][0] == "horizon"


def test_missing_file_and_bad_inputs_are_named():
    with pytest.raises(SpecError, match="file not found"):
        prepare(cf.ModelSpec(task="forecast"), "/no/such/file.csv")
    _, p = prepare(cf.ModelSpec(task="classify"), cf.datasets.load("digits"))
    with pytest.raises(SpecError, match="inputs.0: expected 8 features"):
        p.preprocessor.transform([np.zeros((3, 5))])
    with pytest.raises(SpecError, match="NaN"):
        p.preprocessor.transform([np.full((3, 8), np.nan)])
    with pytest.raises(SpecError, match="empty batch"):
        p.preprocessor.transform([])


def test_unknown_data_set_lists_known_ones():
    with pytest.raises(ValueError, match="known data sets: \\['adding', 'co2_seasonal', 'dates', 'debian_descriptions', 'digits', "
                                         "'docstrings', "
                                         "'internal_bleeding', 'numbers', 'spoken_digits', 'spoken_words', 'sunspots'\\]"):
        cf.datasets.load("mnist")
