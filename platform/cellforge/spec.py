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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TASKS = ("classify", "regress", "forecast", "tag")
FRAMEWORKS = ("torch", "tensorflow")


class SpecError(ValueError):
    """A spec, job file or request is invalid; ``problems`` lists (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]], what: str = "spec"):
        self.problems = problems
        lines = "\n".join(f"  - {path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"invalid {what} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")

    @classmethod
    def from_validation(cls, err: ValidationError, what: str = "spec", prefix: str = "") -> SpecError:
        return cls(problems_of(err, prefix), what)


def problems_of(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a pydantic error into (dotted field path, message with the value received)."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        path = ".".join(p for p in (prefix, loc) if p)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] not in ("missing",) and "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        out.append((path, msg))
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        from cellforge.cells import CELLS

        problems = []
        if self.cell not in CELLS:
            problems.append(f"cell: unknown cell {self.cell!r}; known cells: {sorted(CELLS)}")
        if self.task == "forecast" and self.input.type == "text":
            problems.append("input.type: forecast needs numeric input, got 'text'")
        t = self.training
        if t.val_fraction + t.test_fraction >= 0.9:
            problems.append(
                f"training.test_fraction: val_fraction + test_fraction must be < 0.9, got {t.val_fraction + t.test_fraction:g}"
            )
        if t.early_stopping is not None and t.val_fraction == 0:
            problems.append("training.early_stopping: needs a validation split (val_fraction > 0)")
        if problems:
            raise ValueError(" || ".join(problems))  # split back into field paths by parse()
        return self

    # construction that reports every problem at once -------------------------
    @classmethod
    def parse(cls, data: dict[str, Any] | ModelSpec, prefix: str = "") -> ModelSpec:
        """Validate a plain dict; raise one SpecError listing every problem."""
        if isinstance(data, ModelSpec):
            return data
        if not isinstance(data, dict):
            raise SpecError([(prefix, f"expected a mapping of spec fields, got {type(data).__name__}")])
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            problems = problems_of(err, prefix)
            # the cross-field check joins its problems with " || ", each naming its own path
            flat = []
            for path, msg in problems:
                if path in (prefix, "") and ": " in msg:
                    for part in msg.split(" || "):
                        p, _, m = part.partition(": ")
                        flat.append((".".join(x for x in (prefix, p) if x), m))
                else:
                    flat.append((path, msg))
            raise SpecError(flat) from None

    def updated(self, **changes: Any) -> ModelSpec:
        """A copy with dotted-path changes, validated: ``spec.updated(**{"training.lr": 0.01})``."""
        data = self.model_dump()
        for dotted, value in changes.items():
            set_path(data, dotted, value)
        return ModelSpec.parse(data)

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
