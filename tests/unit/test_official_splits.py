"""Official splits (``prepare(spec, train, validation=, test=)``, a table's ``input.split`` column): each
given split is kept exactly, preprocessing is fitted on the training rows alone, a missing split is carved
from the training rows, bad split values name the field."""

import numpy as np
import pandas as pd
import pytest

import cellforge as cf
from cellforge.data.preprocess import fit_scaler, prepare, split_parts
from cellforge.errors import SpecError


def part(n, shift, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, (n, 5, 2)).astype(np.float32)
    return x, (x[:, :, 0].mean(1) > shift).astype(np.int64)


def test_given_splits_are_kept_exactly_and_preprocessing_sees_training_only():
    train, val, test = part(60, 0.0, 0), part(20, 5.0, 1), part(30, 50.0, 2)  # far apart: a leak would show
    spec = cf.ModelSpec(training={"val_fraction": 0.3, "test_fraction": 0.3})
    _, p = prepare(spec, train, validation=val, test=test)
    for name, (x, _) in (("train", train), ("val", val), ("test", test)):
        got, want = p.splits[name]["x"], p.preprocessor.transform(x)[0]  # scaled rows
        assert len(got) == len(x) and {bytes(r) for r in got} == {bytes(r) for r in want}, name
    want = fit_scaler(train[0].reshape(-1, 2).astype(np.float64), "standard")
    np.testing.assert_allclose(p.preprocessor.state["scaler"]["shift"], want["shift"], rtol=1e-12)
    np.testing.assert_allclose(p.preprocessor.state["scaler"]["scale"], want["scale"], rtol=1e-12)
    # only a test split given: validation is carved from the training rows at val_fraction
    _, p = prepare(spec, train, test=test)
    assert (len(p.splits["train"]["y"]), len(p.splits["val"]["y"]), len(p.splits["test"]["y"])) == (42, 18, 30)
    assert {bytes(r) for r in p.splits["test"]["x"]} == {bytes(r) for r in p.preprocessor.transform(test[0])[0]}


def test_text_vocabulary_from_training_rows_only():
    spec = cf.ModelSpec(input={"type": "text"})
    _, p = prepare(spec, (["a b", "b c"] * 5, [0, 1] * 5), test=(["zebra", "yak"], [0, 1]))
    assert "zebra" not in p.preprocessor.state["vocab"] and len(p.splits["test"]["y"]) == 2


def test_a_split_column():
    df = pd.DataFrame({"text": [f"w{i} x" for i in range(12)], "label": [i % 2 for i in range(12)],
                       "part": ["train"] * 6 + ["dev"] * 2 + ["Test"] * 4})
    spec = cf.ModelSpec(input={"type": "text", "target": "label", "split": "part"})
    _, p = prepare(spec, df)
    assert [len(p.splits[k]["y"]) for k in ("train", "val", "test")] == [6, 2, 4]
    assert p.raw_test == [f"w{i} x" for i in range(8, 12)]
    with pytest.raises(SpecError, match="input.split") as e:
        prepare(spec, df.assign(part=["train"] * 10 + ["holdout"] * 2))
    assert "holdout" in str(e.value)
    with pytest.raises(SpecError, match="input.columns"):
        prepare(spec.updated(**{"input.split": "nope"}), df)


def test_groups_carve_a_missing_split_by_group():
    src = cf.data.Sequences(list(range(40)), [0, 1] * 20, groups=[i // 4 for i in range(40)],
                            split=["train"] * 32 + ["test"] * 8)
    parts = split_parts(src, 0.25, 0.5, 0)
    assert (parts["test"] == np.arange(32, 40)).all()
    val_groups = {i // 4 for i in parts["val"]}
    assert val_groups and not val_groups & {i // 4 for i in parts["train"]}


def test_a_folder_per_label_and_a_manifest(tmp_path):
    import soundfile as sf

    for label in ("no", "yes"):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for i in range(3):
            sf.write(tmp_path / "clips" / label / f"{i}.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "clips" / "yes" / "notes.txt").write_text("not a clip")
    audio = cf.ModelSpec(input={"type": "audio"})
    src = cf.data.to_source(tmp_path / "clips", audio)
    assert src.y == ["no"] * 3 + ["yes"] * 3 and src.x[0].endswith("clips/no/0.wav")
    pd.DataFrame({"path": ["clips/no/0.wav", "clips/yes/1.wav"], "label": ["no", "yes"]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    src = cf.data.to_source(tmp_path / "manifest.csv", audio.updated(**{"input.target": "label"}))
    assert src.x == [str(tmp_path / "clips/no/0.wav"), str(tmp_path / "clips/yes/1.wav")]
    with pytest.raises(SpecError, match="input.type 'audio' or 'text'"):
        cf.data.to_source(tmp_path / "clips", cf.ModelSpec())
