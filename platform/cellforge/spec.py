"""The framework-agnostic model spec: one pydantic model, JSON/YAML round trip.

    >>> import cellforge as cf
    >>> spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=64, num_layers=2)
    >>> cf.ModelSpec.from_json(spec.to_json()) == spec
    True

Every problem in a spec is reported at once, each with its field path, as one
``SpecError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from cellforge.cells import CELLS
from cellforge.errors import Problems, Strict

TASKS = ("classify", "regress", "forecast", "tag")
FRAMEWORKS = ("torch", "tensorflow")


class _Strict(Strict):
    what = "spec"


class InputSpec(_Strict):
    """What goes into the network and how raw data is turned into it."""

    type: Literal["numeric", "text"] = "numeric"
    # tabular sources (DataFrame, CSV, Parquet, Ray Data): which columns are what
    columns: list[str] | None = None  # feature columns; None = every column but target/group
    target: str | list[str] | None = None  # label/value column(s); for forecast the series to predict
    group: str | None = None  # rows sharing this column's value form one sequence
    num_features: int | None = Field(None, gt=0)  # filled in from the data by fit()
    max_length: int | None = Field(None, gt=0)  # longer sequences are cut to their last max_length steps
    scale: Literal["standard", "minmax", "none"] = "standard"  # fitted on the training split only
    # forecasting: how many past steps the model sees
    window: int = Field(24, gt=0)
    # text
    tokenizer: Literal["word", "char"] = "word"
    lowercase: bool = True
    max_vocab: int = Field(20000, gt=1)  # including <pad> and <unk>
    min_freq: int = Field(1, gt=0)
    embedding_dim: int = Field(64, gt=0)
    vocab_size: int | None = Field(None, gt=1)  # filled in from the data by fit()


class EarlyStopping(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, gt=0)
    min_delta: float = Field(0.0, ge=0)


class TrainingSpec(_Strict):
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd and rmsprop only
    weight_decay: float = Field(0.0, ge=0)  # added to the gradient by the optimizer, as torch.optim does (not AdamW)
    lr_schedule: Literal["none", "step", "exponential", "cosine", "plateau"] = "none"
    lr_step_size: int = Field(10, gt=0)  # epochs between decays (step)
    lr_gamma: float = Field(0.5, gt=0, le=1)  # decay factor (step, exponential, plateau)
    lr_patience: int = Field(2, gt=0)  # epochs without val_loss improvement (plateau)
    clip_norm: float | None = Field(None, gt=0)  # global gradient-norm clipping
    l1: float = Field(0.0, ge=0)
    l2: float = Field(0.0, ge=0)  # added to the loss, so identical in both frameworks
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)  # global: split across workers
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    early_stopping: EarlyStopping | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _splits(self) -> TrainingSpec:
        problems = []
        if self.val_fraction + self.test_fraction >= 0.9:
            problems.append(("test_fraction", "val_fraction + test_fraction must be < 0.9, got "
                                              f"{self.val_fraction + self.test_fraction:g}"))
        if self.early_stopping is not None and self.val_fraction == 0:
            problems.append(("early_stopping", "needs a validation split (val_fraction > 0)"))
        if problems:
            raise Problems(problems)
        return self


class ModelSpec(_Strict):
    """A recurrent model and how to train it, independent of the framework.

    Example:
        >>> spec = ModelSpec(task="forecast", cell="gru", horizon=3, input={"window": 12})
        >>> spec.training.epochs
        10
    """

    framework: Literal["torch", "tensorflow"] = "torch"
    task: Literal["classify", "regress", "forecast", "tag"] = "classify"
    cell: str = "lstm"  # a name in cellforge.cells.CELLS
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(1, gt=0, le=16)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked layers
    num_classes: int | None = Field(None, gt=1)  # classify/tag; filled in from the data
    num_outputs: int | None = Field(None, gt=0)  # regress; filled in from the data
    horizon: int = Field(1, gt=0)  # forecast: steps ahead
    input: InputSpec = Field(default_factory=InputSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @field_validator("cell")
    @classmethod
    def _known_cell(cls, v: str) -> str:  # a field check, so it is reported with every other field's
        if v not in CELLS:
            raise ValueError(f"unknown cell {v!r}; known cells: {sorted(CELLS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.task == "forecast" and self.input.type == "text":
            raise Problems([("input.type", "forecast needs numeric input, got 'text'")])
        return self

    def updated(self, **changes: Any) -> ModelSpec:
        """A copy with dotted-path changes, validated: ``spec.updated(**{"training.lr": 0.01})``."""
        data = self.model_dump()
        for dotted, value in changes.items():
            set_path(data, dotted, value)
        return ModelSpec.parse(data)

    def with_epochs(self, epochs: int | None) -> ModelSpec:
        """This spec, or a copy training for ``epochs`` (what ``fit``/``sweep``/job steps' ``epochs`` do)."""
        return self if epochs is None else self.updated(**{"training.epochs": epochs})

    @classmethod
    def of(cls, spec: ModelSpec | dict[str, Any], epochs: int | None = None, prefix: str = "") -> ModelSpec:
        """A validated spec from a ModelSpec or a dict of its fields, with ``epochs`` applied."""
        return cls.parse(spec, prefix).with_epochs(epochs)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.parse(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> ModelSpec:
        text = text_or_path
        if isinstance(text_or_path, Path) or (
            isinstance(text_or_path, str) and "\n" not in text_or_path and text_or_path.endswith((".yaml", ".yml"))
        ):
            text = Path(text_or_path).read_text()
        return cls.parse(yaml.safe_load(text))

    # derived sizes -----------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def rnn_input_size(self) -> int:
        if self.input.type == "text":
            return self.input.embedding_dim
        if self.input.num_features is None:
            raise ValueError("input.num_features is not set: fit() fills it in from the data")
        return self.input.num_features

    @property
    def output_size(self) -> int:
        """Width of the head's output (logits, values, or horizon x targets flattened)."""
        if self.task in ("classify", "tag"):
            if self.num_classes is None:
                raise ValueError("num_classes is not set: fit() fills it in from the data")
            return self.num_classes
        if self.task == "regress":
            return self.num_outputs or 1
        return self.horizon * (self.num_outputs or 1)


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``, creating nothing new on the way."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {} if node.get(key) is None else node[key]
        node = node[key]
    node[leaf] = value
