"""The spec: round trips, unknown keys, every problem reported at once with its field path."""

import json
import subprocess
import sys

import pytest

import cellforge as cf
from cellforge.errors import SpecError
from cellforge.spec import ModelSpec


def test_json_and_yaml_round_trip():
    spec = cf.ModelSpec(task="forecast", cell="gru", hidden_size=32, num_layers=2, bidirectional=True,
                        dropout=0.1, horizon=3, input={"window": 12, "target": "y"},
                        training={"optimizer": "rmsprop", "lr_schedule": "plateau", "clip_norm": 1.0,
                                  "early_stopping": {"metric": "val_rmse", "patience": 2}})
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_yaml(spec.to_yaml()) == spec


def test_every_problem_reported_at_once_with_paths():
    bad = {"task": "classify", "cell": "lstm", "hidden_size": 0, "num_layers": "two", "colour": "red",
           "training": {"lr": -1, "optimizer": "adamw", "epochs": 0}, "input": {"window": 0}}
    with pytest.raises(SpecError) as e:
        ModelSpec.parse(bad)
    paths = {p for p, _ in e.value.problems}
    assert paths == {"hidden_size", "num_layers", "colour", "training.lr", "training.optimizer",
                     "training.epochs", "input.window"}
    msg = str(e.value)
    assert "7 problems" in msg and "colour: unknown field" in msg
    assert "hidden_size: Input should be greater than 0 (got 0)" in msg


def test_cross_field_problems_name_their_fields():
    with pytest.raises(SpecError) as e:
        ModelSpec.parse({"cell": "lstmm", "training": {"val_fraction": 0.5, "test_fraction": 0.45}})
    paths = dict(e.value.problems)
    assert "unknown cell 'lstmm'" in paths["cell"] and "'gru'" in paths["cell"]
    assert "training.test_fraction" in paths


def test_updated_applies_dotted_paths_with_validation():
    spec = cf.ModelSpec()
    assert spec.updated(**{"training.lr": 0.01, "cell": "gru"}).training.lr == 0.01
    with pytest.raises(SpecError, match="training.lr"):
        spec.updated(**{"training.lr": 0})


def test_schema_is_json_serialisable():
    assert "hidden_size" in json.dumps(ModelSpec.model_json_schema())


def test_stdlib_platform_is_not_shadowed():
    # platform/ is the source root, never a package: the standard library must still win
    out = subprocess.run([sys.executable, "-c", "import platform, cellforge; print(platform.system())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("Linux", "Darwin", "Windows")


def test_every_door_gives_one_spec_error_with_every_problem():
    """The constructor (what the README and notebooks use) reports like parse(): every problem at
    once, with its field path, as a SpecError (not pydantic's ValidationError)."""
    from cellforge.jobs.steps import TrainStep
    from cellforge.serving.config import DeployConfig

    with pytest.raises(SpecError) as e:
        cf.ModelSpec(task="anomalyy", cell="lstmm", hidden_size=0, training={"val_fraction": 0.5,
                                                                             "test_fraction": 0.45})
    assert {p for p, _ in e.value.problems} == {"task", "cell", "hidden_size", "training.test_fraction"}
    with pytest.raises(SpecError) as e:
        DeployConfig(bundle="b", name="bad name!", num_replicas=2, autoscaling={}, num_cpus=-1)
    assert {"name", "num_cpus"} <= {p for p, _ in e.value.problems}
    with pytest.raises(SpecError) as e:
        TrainStep(data={"dataset": "digits"}, spec={"hidden_size": 0}, workers=0)
    assert {p for p, _ in e.value.problems} == {"spec.hidden_size", "workers"}
    with pytest.raises(SpecError, match="space.hidden_size"):
        cf.sweep(cf.ModelSpec(), cf.datasets.load("digits"), {"hidden_size": cf.choice([0])})


def test_other_tasks_specs_carry_no_seq2seq_fields():
    """A classifier's spec.json is what it was before seq2seq existed (bundles stay readable by the
    cellforge that wrote the earlier ones); a seq2seq spec round-trips with its own fields."""
    keys = set(json.loads(cf.ModelSpec(task="classify").to_json()))
    assert keys == {"framework", "task", "cell", "hidden_size", "num_layers", "bidirectional", "dropout",
                    "num_classes", "num_outputs", "horizon", "input", "training"}
    assert "teacher_forcing" not in json.loads(cf.ModelSpec().to_json())["training"]
    s2s = cf.ModelSpec(task="seq2seq", input={"type": "text"}, training={"teacher_forcing": 0.5})
    assert ModelSpec.from_json(s2s.to_json()) == s2s and json.loads(s2s.to_json())["attention"] == "additive"
