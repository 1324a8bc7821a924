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
from pydantic import Field, field_validator, model_serializer, model_validator

from cellforge.attention import ATTENTIONS
from cellforge.cells import CELLS
from cellforge.errors import Problems, Strict

TASKS = ("classify", "regress", "forecast", "tag", "seq2seq", "anomaly", "transcribe")
SEQ2SEQ_FIELDS = ("attention", "decoder", "target", "decode")  # None on every other task
FRAMEWORKS = ("torch", "tensorflow")


class _Strict(Strict):
    what = "spec"


class AudioSpec(_Strict):
    """input.type audio: how a clip becomes a feature sequence (librosa; cellforge.data.audio)."""

    sample_rate: int = Field(16000, gt=0)  # Hz; clips at another rate are resampled to it
    resample: bool = True  # off: a clip at another sample rate is refused
    features: Literal["logmel", "mfcc"] = "logmel"
    frame_length: int = Field(400, gt=0)  # samples per FFT window (400 at 16 kHz: 25 ms)
    hop_length: int = Field(160, gt=0)  # samples between frames (160 at 16 kHz: 10 ms)
    n_mels: int = Field(40, gt=0)
    n_mfcc: int = Field(13, gt=0)  # mfcc only
    # each feature's mean and variance over the clip (CMVN) before input.scale, which is fitted on the
    # training split's frames (global normalisation)
    per_utterance: bool = False
    max_seconds: float = Field(30.0, gt=0)  # longer clips are refused

    @model_validator(mode="after")
    def _sizes(self) -> AudioSpec:
        problems = []
        if self.hop_length > self.frame_length:
            problems.append(("hop_length", f"must be <= frame_length ({self.frame_length}), got {self.hop_length}"))
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            problems.append(("n_mfcc", f"must be <= n_mels ({self.n_mels}), got {self.n_mfcc}"))
        if problems:
            raise Problems(problems)
        return self


class InputSpec(_Strict):
    """What goes into the network and how raw data is turned into it."""

    type: Literal["numeric", "text", "audio"] = "numeric"
    audio: AudioSpec | None = None  # type audio only (filled in there)
    # tabular sources (DataFrame, CSV, Parquet, Ray Data): which columns are what
    columns: list[str] | None = None  # feature columns; None = every column but target/group
    target: str | list[str] | None = None  # label/value column(s); for forecast the series to predict
    group: str | None = None  # rows sharing this column's value form one sequence (anomaly: one series, e.g. a machine)
    # official splits: this column says each row's split ('train', 'validation'/'val'/'dev', 'test'),
    # kept exactly; a split it lacks is carved from 'train' by training.val_fraction / test_fraction
    split: str | None = None
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
    # dropout on the network's input steps (text: the embedded tokens), in training only
    dropout: float = Field(0.0, ge=0, lt=1)


class Quantile(_Strict):
    quantile: float = Field(gt=0, le=1)  # of the held-out normal scores; 1 = their maximum


class Contamination(_Strict):
    contamination: float = Field(gt=0, lt=0.5)  # the share of held-out normal points to flag


class Risk(_Strict):
    risk: float = Field(gt=0, lt=0.1)  # a normal step's chance of exceeding it, from a fitted tail (POT)


class AnomalySpec(_Strict):
    """anomaly: how a step is scored and where the threshold sits (calibrated on held-out normal data)."""

    # forecast: the error of predicting each step from the window before it; reconstruct: a recurrent
    # encoder-decoder rebuilds the window that ends at each step, and the error of rebuilding it
    method: Literal["forecast", "reconstruct"] = "forecast"
    # auto: where a tail fitted to the held-out normal (validation) scores puts a normal step's chance
    # 1e-3 of exceeding it, never below their highest (cellforge.anomaly.scores.threshold_of; with
    # labels: the best F1 there); {"quantile": q} of those scores; {"contamination": r}: flag a share
    # r of them; {"risk": p}: the tail's point at chance p (peaks over threshold)
    threshold: Literal["auto"] | Quantile | Contamination | Risk = "auto"

    @field_validator("threshold", mode="before")
    @classmethod
    def _one_rule(cls, v: Any) -> Any:  # one message instead of one per member of the union
        expected = ("expected 'auto', {'quantile': q} with 0 < q <= 1, {'contamination': r} with 0 < r < 0.5, "
                    "or {'risk': p} with 0 < p < 0.1")
        if isinstance(v, (Quantile, Contamination, Risk)) or v == "auto":
            return v
        rules = {"quantile": (Quantile, lambda x: 0 < x <= 1), "contamination": (Contamination, lambda x: 0 < x < 0.5),
                 "risk": (Risk, lambda x: 0 < x < 0.1)}
        if not (isinstance(v, dict) and len(v) == 1 and set(v) <= set(rules)):
            raise ValueError(f"{expected}; got {v!r}")
        (key, value), = v.items()
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and rules[key][1](value)):
            raise ValueError(f"{expected}; got {v!r}")
        return rules[key][0](**{key: value})


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
    # seq2seq: the chance that a decoder step is fed the true previous token rather than its own
    # prediction (1.0: always the truth, Williams & Zipser's teacher forcing)
    teacher_forcing: float = Field(1.0, ge=0, le=1)
    # batches of sequences of similar length (each batch is cut to its longest, so less padding is run):
    # the epoch's shuffled examples taken 50 batches at a time, sorted by length, cut into batches whose
    # order is shuffled again. Helps variable-length data (audio, text); a no-op on fixed-length data.
    # Not for a bidirectional torch model (its batches run packed): an epoch took 2.3x longer bucketed
    # (LSTM h=128, lengths 10-400, torch alone; unidirectional ones run unpacked and gain 1.9x)
    bucket_by_length: bool = False

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


def _known(names: dict, what: str, v: str | None, extra: tuple[str, ...] = ()) -> str | None:
    if v is not None and v not in names and v not in extra:
        raise ValueError(f"unknown {what} {v!r}; known {what}s: {sorted([*extra, *names])}")
    return v


class TargetSpec(_Strict):
    """seq2seq: the output text and its vocabulary, fitted on the training split's targets."""

    # word: split on whitespace, so a prediction joins back into exactly the text it was trained on
    tokenizer: Literal["char", "word"] = "char"
    lowercase: bool = False  # outputs keep their case unless asked
    max_length: int = Field(64, gt=0)  # tokens, <eos> included; longer training targets are cut
    max_vocab: int = Field(20000, gt=4)  # including <pad>, <unk>, <bos> and <eos>
    min_freq: int = Field(1, gt=0)
    embedding_dim: int = Field(64, gt=0)
    vocab_size: int | None = Field(None, gt=4)  # filled in from the data by fit()


class DecoderSpec(_Strict):
    """seq2seq: the decoder's recurrent stack; an unset size or cell is the encoder's."""

    cell: str | None = None
    hidden_size: int | None = Field(None, gt=0)
    num_layers: int | None = Field(None, gt=0, le=16)
    # how the decoder starts: linear = tanh(W [encoder's last h fwd, bwd] + b) per layer and state
    # tensor (Bahdanau et al. 2015 used the backward one); zero = zeros
    bridge: Literal["linear", "zero"] = "linear"
    # Luong et al. 2015: feed the previous attentional vector with each input token. None: on
    # when there is attention (it needs attention)
    input_feeding: bool | None = None

    @field_validator("cell")
    @classmethod
    def _known_cell(cls, v: str | None) -> str | None:
        return _known(CELLS, "cell", v)


class DecodeSpec(_Strict):
    """seq2seq: how predictions are decoded."""

    strategy: Literal["greedy", "beam"] = "greedy"
    beam_width: int | None = Field(None, gt=0)  # beam only; unset: 5
    max_length: int | None = Field(None, gt=0)  # output tokens, <eos> included; unset: target.max_length
    # beam only: GNMT's alpha (Wu et al. 2016), scores divided by ((5 + length) / 6) ** alpha; 0
    # favours short outputs. Unset: 1.0
    length_penalty: float | None = Field(None, ge=0, le=5)

    @model_validator(mode="after")
    def _beam_only(self) -> DecodeSpec:  # here, not in ModelSpec: reported even when other fields are bad
        if self.strategy == "greedy":
            problems = [(f, "only used by strategy 'beam', got strategy 'greedy'")
                        for f in ("beam_width", "length_penalty") if getattr(self, f) is not None]
            if problems:
                raise Problems(problems)
        return self

    @property
    def width(self) -> int:
        return 1 if self.strategy == "greedy" else (self.beam_width or 5)

    @property
    def alpha(self) -> float:
        return 1.0 if self.length_penalty is None else self.length_penalty


KEY_FIELDS = ("framework", "task", "cell", "hidden_size")  # what to_yaml always shows, default or not
INFERRED = ("num_classes", "num_outputs", "num_features", "vocab_size")  # fit fills these in from the data


class ModelSpec(_Strict):
    """A recurrent model and how to train it, independent of the framework.

    Example:
        >>> spec = ModelSpec(task="forecast", cell="gru", horizon=3, input={"window": 12})
        >>> spec.training.epochs
        10
    """

    framework: Literal["torch", "tensorflow"] = "torch"
    # transcribe: a sequence (audio) -> a shorter token sequence, by CTC over target's vocabulary
    task: Literal["classify", "regress", "forecast", "tag", "seq2seq", "anomaly", "transcribe"] = "classify"
    cell: str = "lstm"  # a name in cellforge.cells.CELLS
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(1, gt=0, le=16)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked layers
    # dropout on what the head reads (the summary, or each step's output for tag/transcribe), in training
    # only. With input.dropout 0.5 too it took a word-level GRU on debian_descriptions from 0.749 to 0.790
    # test accuracy (TF-IDF + logistic regression: 0.795; tests/integration/test_real_text.py)
    head_dropout: float = Field(0.0, ge=0, lt=1)
    num_classes: int | None = Field(None, gt=1)  # classify/tag; filled in from the data
    num_outputs: int | None = Field(None, gt=0)  # regress; filled in from the data
    horizon: int = Field(1, gt=0)  # forecast: steps ahead
    input: InputSpec = Field(default_factory=InputSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    # seq2seq only (None on other tasks; a seq2seq spec fills in their defaults)
    attention: str | None = None  # 'none' or a name in cellforge.attention.ATTENTIONS; default additive
    decoder: DecoderSpec | None = None
    target: TargetSpec | None = None
    decode: DecodeSpec | None = None
    anomaly: AnomalySpec | None = None  # anomaly only (filled in there)

    @field_validator("cell")
    @classmethod
    def _known_cell(cls, v: str) -> str:  # a field check, so it is reported with every other field's
        return _known(CELLS, "cell", v)

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, v: str | None) -> str | None:
        return _known(ATTENTIONS, "attention", v, extra=("none",))

    @model_validator(mode="before")
    @classmethod
    def _seq2seq_defaults(cls, data: Any) -> Any:
        # filled in here rather than as field defaults, so other tasks' specs stay free of them
        if isinstance(data, dict) and data.get("task") == "seq2seq":
            defaults = {"attention": "additive", "decoder": {}, "target": {}, "decode": {}}
            data = {**data, **{k: v for k, v in defaults.items() if data.get(k) is None}}
        if isinstance(data, dict) and data.get("task") == "anomaly" and data.get("anomaly") is None:
            data = {**data, "anomaly": {}}
        if isinstance(data, dict) and data.get("task") == "transcribe" and data.get("target") is None:
            data = {**data, "target": {}}
        inp = data.get("input") if isinstance(data, dict) else None
        if isinstance(inp, dict) and inp.get("type") == "audio" and inp.get("audio") is None:
            data = {**data, "input": {**inp, "audio": {}}}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        problems = []
        if self.task == "forecast" and self.input.type == "text":
            problems.append(("input.type", "forecast needs numeric input, got 'text'"))
        if self.task == "anomaly":
            if self.input.type == "text":
                problems.append(("input.type", "anomaly needs numeric input, got 'text'"))
            if self.horizon != 1:
                problems.append(("horizon", f"anomaly scores each step from the ones before it: horizon must be 1, "
                                            f"got {self.horizon}"))
            if self.training.val_fraction == 0:
                problems.append(("training.val_fraction", "anomaly calibrates its threshold on the held-out "
                                                          "validation split: must be > 0, got 0"))
            if self.bidirectional:
                problems.append(("bidirectional", "anomaly scores each step as it arrives (also on live streams), "
                                                  "so the network reads forward only; got true"))
        elif self.anomaly is not None:
            problems.append(("anomaly", f"only for task 'anomaly', got task {self.task!r}"))
        if self.head_dropout and (self.task == "seq2seq" or self.reconstructs):
            problems.append(("head_dropout", "this network has no head (its decoder answers); got "
                                             f"{self.head_dropout:g}"))
        if self.input.type == "audio" and self.task in ("forecast", "anomaly"):
            problems.append(("input.type", f"{self.task} needs numeric input, got 'audio'"))
        if self.input.type != "audio" and self.input.audio is not None:
            problems.append(("input.audio", f"only for input.type 'audio', got {self.input.type!r}"))
        if self.task == "transcribe":
            problems += [(f, "not used by transcribe: the target vocabulary sets the outputs (target.vocab_size)")
                         for f in ("num_classes", "num_outputs") if getattr(self, f) is not None]
        if self.task == "seq2seq":
            problems += self._seq2seq_problems()
        else:
            problems += [(f, f"only for task 'seq2seq', got task {self.task!r}") for f in SEQ2SEQ_FIELDS
                         if getattr(self, f) is not None and not (f == "target" and self.task == "transcribe")]
            if self.training.teacher_forcing != 1.0:
                problems.append(("training.teacher_forcing", f"only for task 'seq2seq', got task {self.task!r}"))
        if problems:
            raise Problems(problems)
        return self

    def _seq2seq_problems(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("num_classes", "num_outputs"):
            if getattr(self, name) is not None:
                problems.append((name, "not used by seq2seq: the target vocabulary sets the outputs "
                                       "(target.vocab_size)"))
        att = ATTENTIONS.get(self.attention)
        if att is not None and att.same_width and self.decoder_hidden != self.memory_size:
            problems.append(("attention", f"{self.attention!r} compares the decoder's state with the encoder's "
                             f"outputs, so decoder.hidden_size ({self.decoder_hidden}) must equal hidden_size x "
                             f"directions ({self.memory_size}); use 'general' or 'additive', or match the sizes"))
        if self.attention == "none" and self.decoder.input_feeding:
            problems.append(("decoder.input_feeding", "feeds the attentional vector back, so it needs attention; "
                                                      "got attention 'none'"))
        return problems

    @model_serializer(mode="wrap")
    def _without_seq2seq(self, handler) -> dict[str, Any]:
        """Other tasks' specs (and so their bundles' spec.json) carry no seq2seq fields: what they were
        before seq2seq existed, readable by the cellforge that wrote the earlier bundles."""
        data = handler(self)
        if self.task != "seq2seq" and isinstance(data, dict):
            for name in SEQ2SEQ_FIELDS:
                if data.get(name) is None:
                    data.pop(name, None)
            if isinstance(data.get("training"), dict) and data["training"].get("teacher_forcing") == 1.0:
                data["training"].pop("teacher_forcing")
        if self.task != "anomaly" and isinstance(data, dict) and data.get("anomaly") is None:
            data.pop("anomaly", None)
        # unset options left out: what specs were before they existed, readable by the cellforge that wrote them
        if isinstance(data, dict) and data.get("head_dropout") == 0.0:
            data.pop("head_dropout")
        if isinstance(data, dict) and isinstance(data.get("input"), dict) and data["input"].get("dropout") == 0.0:
            data["input"].pop("dropout")
        if isinstance(data, dict) and isinstance(data.get("input"), dict) and data["input"].get("audio") is None:
            data["input"].pop("audio", None)  # what non-audio specs were before audio existed
        return data

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

    def to_yaml(self, full: bool = False) -> str:
        """The spec as YAML: the model's key fields, then every field that differs from its default (what
        was set, and what ``fit`` inferred from the data, marked ``# from the data``). Defaults are left
        out, and ``ModelSpec.parse`` puts them back; ``full=True`` writes every field.

            >>> spec = ModelSpec(task="classify", hidden_size=32, training={"epochs": 3})
            >>> print(spec.updated(num_classes=10, **{"input.num_features": 8}).to_yaml().strip())
            framework: torch
            task: classify
            cell: lstm
            hidden_size: 32
            num_classes: 10  # from the data
            input:
              num_features: 8  # from the data
            training:
              epochs: 3
            >>> ModelSpec.from_yaml(spec.to_yaml()) == spec
            True
        """
        if full:
            return yaml.safe_dump(self.model_dump(), sort_keys=False)
        data = {k: getattr(self, k) for k in KEY_FIELDS} | self.model_dump(exclude_defaults=True)
        lines = yaml.safe_dump(data, sort_keys=False).splitlines()
        return "\n".join(line + ("  # from the data" if line.strip().split(":")[0] in INFERRED
                                  and not line.rstrip().endswith(":") else "") for line in lines) + "\n"

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
    def reconstructs(self) -> bool:
        """Whether the network is anomaly's encoder-decoder (a window in, the same window out)."""
        return self.task == "anomaly" and self.anomaly.method == "reconstruct"

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

    # seq2seq's resolved decoder (an unset decoder field is the encoder's)
    @property
    def decoder_cell(self) -> str:
        return self.decoder.cell or self.cell

    @property
    def decoder_hidden(self) -> int:
        return self.decoder.hidden_size or self.hidden_size

    @property
    def decoder_layers(self) -> int:
        return self.decoder.num_layers or self.num_layers

    @property
    def memory_size(self) -> int:
        """Width of the encoder's outputs, what attention reads."""
        return self.hidden_size * self.num_directions

    @property
    def input_feeding(self) -> bool:
        return self.attention != "none" if self.decoder.input_feeding is None else self.decoder.input_feeding

    @property
    def per_step(self) -> bool:
        """Whether the head reads every step (tag, transcribe) rather than the sequence's summary."""
        return self.task in ("tag", "transcribe")

    @property
    def output_size(self) -> int:
        """Width of the head's output (logits, values, or horizon x targets flattened)."""
        if self.task in ("seq2seq", "transcribe"):
            if self.target.vocab_size is None:
                raise ValueError("target.vocab_size is not set: fit() fills it in from the data")
            return self.target.vocab_size
        if self.task in ("classify", "tag"):
            if self.num_classes is None:
                raise ValueError("num_classes is not set: fit() fills it in from the data")
            return self.num_classes
        if self.task == "regress":
            return self.num_outputs or 1
        if self.task == "anomaly":  # the next step's features (forecast) or each step's (reconstruct)
            return self.rnn_input_size
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
