"""Job steps: each one a class that declares its fields, its outputs and how it runs.

The same class is a job file's step (``- train: {...}``), a ``cellforge <kind>`` command (flags
made from its fields, see ``cellforge.cli``) and the validation of both. Adding a step: one class
here, with ``kind``, ``outputs`` and ``run``, and its name in ``STEPS``.

    >>> step = TrainStep.parse({"data": {"dataset": "digits"}, "spec": {"cell": "gru"}, "workers": 2})
    >>> step.outputs
    ('bundle', 'metrics')
    >>> TrainStep.parse({"data": {"dataset": "digits"}, "spec": {"hidden_size": 0}})
    Traceback (most recent call last):
    ...
    cellforge.errors.SpecError: invalid job step (1 problem):
      - spec.hidden_size: Input should be greater than 0 (got 0)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cellforge import bundle as _bundle
from cellforge import registry
from cellforge.data import datasets, read_table
from cellforge.errors import Problems, SpecError, Strict, problems_of
from cellforge.evaluate import evaluate, predict_file
from cellforge.log import log
from cellforge.model import load
from cellforge.serving.config import DeployConfig
from cellforge.serving.deploy import deploy
from cellforge.spec import ModelSpec
from cellforge.train.fit import fit
from cellforge.tune.space import as_space
from cellforge.tune.sweep import sweep, sweep_problems

# ``${step_id.output}``: an earlier step's output, filled in when the job runs
REF = re.compile(r"\$\{\s*([A-Za-z_][\w-]*)\.([A-Za-z_][\w.-]*?)\s*\}")


def has_ref(value: Any) -> bool:
    """Whether ``value`` (a string, or anything JSON-like) holds a ``${id.output}`` reference."""
    return bool(REF.search(value if isinstance(value, str) else json.dumps(value, default=str)))


class DataRef(Strict):
    """Where a step's data comes from: a built-in data set or a file (relative to the job file)."""

    what: ClassVar[str] = "data reference"
    dataset: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the built-in data set
    path: str | None = None  # CSV, TSV or Parquet

    @model_validator(mode="after")
    def _one(self):
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset' or 'path'")
        if self.dataset is not None and self.dataset not in datasets.DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; known data sets: {sorted(datasets.DATASETS)}")
        return self

    @classmethod
    def from_cli(cls, value: str) -> dict[str, Any]:
        """``--data digits`` (a built-in data set) or ``--data file.csv``."""
        return {"dataset": value} if value in datasets.DATASETS else {"path": value}

    def load(self, base: Path):
        if self.dataset:
            return datasets.load(self.dataset, **self.args)
        return (base / self.path).resolve()


def _load(ref: DataRef | None, base: Path):
    return None if ref is None else ref.load(base)


class Step(Strict):
    """What every step has. Class attributes say what the job runner and the CLI need to know."""

    what: ClassVar[str] = "job step"
    kind: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]  # what ``${id.<output>}`` may name
    positional: ClassVar[tuple[str, ...]] = ()  # fields the CLI takes as positional arguments
    reads_bundle: ClassVar[bool] = False  # its ``bundle`` field is an input, checked to exist
    takes_refs: ClassVar[bool] = False  # ...or a registry reference (models:/NAME@ALIAS), resolved when run
    files: ClassVar[tuple[str, ...]] = ()  # dotted fields naming files it reads, checked to exist
    # fields naming paths it writes: in a submitted job they land under the durable root (jobs.durable)
    writes: ClassVar[tuple[str, ...]] = ()
    serves: ClassVar[bool] = False  # deploys: the job keeps its endpoints up after the last step

    id: str | None = None  # how later steps refer to this one (default: its kind, then kind2, ...)

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        """Do the step; paths in its fields are relative to ``base``. Returns its outputs."""
        raise NotImplementedError


def _valid_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A step's ``spec`` field: its problems under the field's path (unchecked while it holds ${refs})."""
    if not has_ref(spec):
        try:
            ModelSpec.parse(spec)
        except SpecError as e:
            raise Problems(e.problems) from None
    return spec


class TrainStep(Step):
    """Train a spec on data with Ray Train workers; save a bundle."""

    kind: ClassVar[str] = "train"
    writes: ClassVar[tuple[str, ...]] = ("bundle",)
    outputs: ClassVar[tuple[str, ...]] = ("bundle", "metrics")
    positional: ClassVar[tuple[str, ...]] = ("spec",)
    files: ClassVar[tuple[str, ...]] = ("data.path", "validation.path", "test.path")

    data: DataRef
    # a benchmark's official splits, kept exactly (``data`` is then the training data); one not given is
    # carved from ``data`` at the spec's fractions
    validation: DataRef | None = None
    test: DataRef | None = None
    spec: dict[str, Any] = Field(default_factory=dict)  # ModelSpec fields
    workers: int = Field(1, gt=0)
    use_gpu: bool = False
    epochs: int | None = Field(None, gt=0)  # overrides spec.training.epochs
    name: str | None = None  # run name: rerunning resumes from its last checkpoint
    bundle: str | None = None  # where to save the bundle (relative to the job file)
    max_failures: int = Field(0, ge=0)  # worker failures to recover from
    show: int = Field(5, ge=0)  # test predictions to print next to the truth
    tracking: str | None = None  # an MLflow tracking URI or 'none' (default: $MLFLOW_TRACKING_URI, else local)
    tensorboard: bool | None = None  # TensorBoard event files in the run's directory (default: $CELLFORGE_TENSORBOARD)

    _spec = field_validator("spec")(lambda cls, v: _valid_spec(v))

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        result = fit(ModelSpec.parse(self.spec), self.data.load(base), validation=_load(self.validation, base),
                     test=_load(self.test, base), workers=self.workers, use_gpu=self.use_gpu,
                     epochs=self.epochs, name=self.name, address=address, max_failures=self.max_failures,
                     bundle_path=(base / self.bundle).resolve() if self.bundle else None, tracking=self.tracking,
                     tensorboard=self.tensorboard)
        model = load(result.bundle)  # reload from disk: what a user would deploy
        if self.show and result.examples:
            log.info("%r: %d test predictions", model, min(self.show, len(result.examples)))
            for ex in result.examples[: self.show]:
                log.info("    predicted %-24s truth %s", _short(ex["prediction"]), _short(ex["truth"]))
        return {"bundle": str(result.bundle), "metrics": result.metrics}


class EvaluateStep(Step):
    """A bundle + data with targets -> metrics."""

    kind: ClassVar[str] = "evaluate"
    outputs: ClassVar[tuple[str, ...]] = ("metrics",)
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True
    files: ClassVar[tuple[str, ...]] = ("data.path",)

    bundle: str  # a bundle directory (relative to the job file) or ${step.bundle}
    data: DataRef
    # 'test' re-creates the bundle's own held-out split of this data (same fractions and seed)
    split: Literal["test", "val", "train", "all"] = "test"
    framework: Literal["torch", "tensorflow", "numpy", "onnx"] | None = None  # runtime; default as trained

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        metrics = evaluate(base / self.bundle, self.data.load(base), self.split, self.framework)
        log.info("%s split: %s", self.split, "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return {"metrics": metrics}


class PredictStep(Step):
    """A bundle + an input file (CSV/TSV/Parquet/JSON) -> predictions written to a CSV or JSON file."""

    kind: ClassVar[str] = "predict"
    writes: ClassVar[tuple[str, ...]] = ("output",)
    outputs: ClassVar[tuple[str, ...]] = ("output", "rows")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True
    files: ClassVar[tuple[str, ...]] = ("input",)

    bundle: str
    input: str  # relative to the job file
    output: str  # .csv or .json, relative to the job file
    columns: list[str] | None = None  # feature (or text) columns; default: every other numeric column
    group: str | None = None  # rows sharing this column form one sequence; default the spec's input.group
    framework: Literal["torch", "tensorflow", "numpy", "onnx"] | None = None

    @field_validator("output")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not v.endswith((".csv", ".json")) and not has_ref(v):
            raise ValueError("expected a .csv or .json file")
        return v

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        out = predict_file(base / self.bundle, base / self.input, base / self.output, columns=self.columns,
                           group=self.group, framework=self.framework)
        log.info("%d predictions written to %s", out["rows"], out["output"])
        return out


class DetectStep(Step):
    """An anomaly bundle + a series file (CSV/TSV/Parquet, one row per step) -> the same rows with each
    step's score, flag and warm-up mark (and each feature's standardised error) written to a CSV."""

    kind: ClassVar[str] = "detect"
    writes: ClassVar[tuple[str, ...]] = ("output",)
    outputs: ClassVar[tuple[str, ...]] = ("output", "rows", "flagged", "intervals", "metrics")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True
    files: ClassVar[tuple[str, ...]] = ("input",)

    bundle: str
    input: str  # relative to the job file; the columns the model was trained on are read from it
    output: str  # .csv, relative to the job file
    labels: str | None = None  # a 0/1 column of the input: detection metrics against it
    threshold: float | None = None  # default: the bundle's calibrated threshold
    framework: Literal["torch", "tensorflow", "numpy", "onnx"] | None = None

    @field_validator("output")
    @classmethod
    def _csv(cls, v: str) -> str:
        if not v.endswith(".csv") and not has_ref(v):
            raise ValueError("expected a .csv file")
        return v

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        model = load(base / self.bundle, self.framework)
        frame = read_table(base / self.input).reset_index(drop=True)
        if self.labels is not None and self.labels not in frame.columns:
            raise SpecError([("labels", f"no column {self.labels!r} in {self.input}; it has {list(frame.columns)}")],
                            what="job step")
        found = model.detect(frame, self.threshold)
        out = base / self.output
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.join(found.frame().drop(columns="step")).to_csv(out, index=False)
        metrics = found.metrics(frame[self.labels].to_numpy()) if self.labels else {}
        log.info("%d steps scored, %d flagged in %d interval(s) (threshold %.4g); written to %s", len(frame),
                 int(found.flags.sum()), len(found.intervals), found.threshold, out)
        if metrics:
            log.info("against %r: %s", self.labels, "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return {"output": str(out), "rows": len(frame), "flagged": int(found.flags.sum()),
                "intervals": [list(i) for i in found.intervals], "metrics": metrics}


class SweepStep(Step):
    """``cellforge.sweep`` as a step. Outputs: ``bundle`` (the best trial's, at
    ``<storage>/<name>/best/bundle``), ``best`` (its parameters and metrics), ``leaderboard``."""

    kind: ClassVar[str] = "sweep"
    outputs: ClassVar[tuple[str, ...]] = ("bundle", "best", "leaderboard")
    positional: ClassVar[tuple[str, ...]] = ("spec",)
    files: ClassVar[tuple[str, ...]] = ("data.path", "validation.path", "test.path")

    data: DataRef
    # a benchmark's official splits, kept exactly (``data`` is then the training data); one not given is
    # carved from ``data`` at the spec's fractions
    validation: DataRef | None = None
    test: DataRef | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any]
    trials: int | None = Field(None, gt=0)
    metric: str | None = None
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    search: Literal["random", "grid", "optuna"] = "random"
    workers_per_trial: int = Field(1, gt=0)
    use_gpu: bool = False
    epochs: int | None = Field(None, gt=0)
    name: str | None = None  # rerunning the job resumes the sweep of this name
    max_concurrent: int | None = Field(None, gt=0)
    grace_period: int = Field(1, gt=0)
    seed: int = 0
    tracking: str | None = None  # as train's: the sweep a parent run, its trials child runs
    tensorboard: bool | None = None  # as train's: event files per trial under <runs>/<name>/tensorboard

    _spec = field_validator("spec")(lambda cls, v: _valid_spec(v))

    @model_validator(mode="wrap")
    @classmethod
    def _space(cls, data: Any, handler):
        """The space and arguments against the step's spec, as ``sweep`` checks them, reported with
        the fields' own problems (a bad data set does not hide a bad space); skipped while the spec
        holds ${refs} or is itself invalid."""
        problems: list[tuple[str, str]] = []
        step = None
        try:
            step = handler(data)
        except ValidationError as e:
            problems = problems_of(e)
        if isinstance(data, dict) and isinstance(data.get("spec", {}), dict) and not has_ref(data.get("spec", {})):
            seen = {p for p, _ in problems}
            problems += [(p, m) for p, m in _sweep_problems(data) if p not in seen]
        if problems:
            raise Problems(problems)
        return step

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        s = sweep(ModelSpec.parse(self.spec), self.data.load(base), self.space, validation=_load(self.validation, base),
                  test=_load(self.test, base), trials=self.trials,
                  metric=self.metric, scheduler=self.scheduler, search=self.search,
                  workers_per_trial=self.workers_per_trial, use_gpu=self.use_gpu, epochs=self.epochs,
                  name=self.name, address=address, max_concurrent=self.max_concurrent,
                  grace_period=self.grace_period, seed=self.seed, tracking=self.tracking,
                  tensorboard=self.tensorboard)
        board = s.leaderboard()
        return {"bundle": str(s.best_bundle), "best": s.best,
                "leaderboard": json.loads(board.reset_index().to_json(orient="records"))}


def _sweep_problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """What ``sweep`` would refuse in a sweep step's raw fields (nothing when its spec is invalid:
    the spec field reports that)."""
    try:
        epochs = raw.get("epochs")
        spec = ModelSpec.of(raw.get("spec", {}), epochs if isinstance(epochs, int) and epochs > 0 else None)
    except SpecError:
        return []
    dims, problems = as_space(raw.get("space"))
    return problems + sweep_problems(spec, dims, raw.get("trials"), raw.get("metric"), raw.get("scheduler", "asha"),
                                     raw.get("search", "random"), raw.get("workers_per_trial", 1),
                                     raw.get("grace_period", 1), 2)


class DeployStep(DeployConfig, Step):
    """Serve a bundle: every ``DeployConfig`` field, plus where Serve listens.

        - deploy:
            bundle: ${search.bundle}        # or a bundle directory, relative to the job file,
            name: digits                    # or a registry reference: models:/digits@production
            autoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 8}
    """

    kind: ClassVar[str] = "deploy"
    outputs: ClassVar[tuple[str, ...]] = ("name", "url", "version")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True
    takes_refs: ClassVar[bool] = True
    serves: ClassVar[bool] = True

    host: str = "127.0.0.1"  # where Serve's HTTP proxy listens, if this step starts Serve
    port: int = 8000
    # keep serving until Ctrl-C once the job's last step is done; default: when on an embedded Ray,
    # which would end with the job
    block: bool | None = None
    tracking: str | None = None  # the registry's MLflow URI, for a models:/ reference
    # a canary of the model `name` serves: this percent of its new predictions and sessions (serving.traffic);
    # rolled back by itself above max_error_rate (with min_requests sent to it), else `cellforge rollback`
    canary: float | None = Field(None, gt=0, lt=100)
    max_error_rate: float | None = Field(None, ge=0, lt=1)
    min_requests: int | None = Field(None, gt=0)

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        fields = self.model_dump(exclude={"id", "host", "port", "block", "bundle", "name"}, exclude_unset=True)
        bundle = self.bundle if registry.parse_ref(self.bundle) else base / self.bundle
        ep = deploy(bundle, self.name, host=self.host, port=self.port, address=address, **fields)
        log.info("%s version %s serving at %s  (API docs: %s/docs)", ep.name, ep.version, ep.url, ep.base_url)
        return {"name": ep.name, "url": ep.url, "version": ep.version}


class ExportStep(Step):
    """Export a bundle to run outside Python and Ray: ONNX (whole sequences, or --step: one step with the
    recurrent state as inputs and outputs) or a TensorFlow SavedModel; its preprocessing beside it as JSON."""

    kind: ClassVar[str] = "export"
    writes: ClassVar[tuple[str, ...]] = ("out",)
    outputs: ClassVar[tuple[str, ...]] = ("model", "preprocessing")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True

    bundle: str
    out: str  # the graph file (.onnx) or the SavedModel directory, relative to the job file
    format: Literal["onnx", "savedmodel"] = "onnx"
    step: bool = False  # ONNX: the single-step graph (unidirectional models)

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        from cellforge.export import export

        files = export(base / self.bundle, base / self.out, self.format, self.step)
        log.info("%s written to %s (preprocessing: %s)", self.format, files["model"], files["preprocessing"])
        return {k: str(v) for k, v in files.items()}


class CompressStep(Step):
    """Prune (optionally fine-tuning on Ray Train) and/or quantize a bundle to int8; a new bundle recording
    what was done and its test metrics beside the original's."""

    kind: ClassVar[str] = "compress"
    writes: ClassVar[tuple[str, ...]] = ("out",)
    outputs: ClassVar[tuple[str, ...]] = ("bundle", "compression")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True
    files: ClassVar[tuple[str, ...]] = ("data.path",)

    bundle: str
    data: DataRef  # what the bundle was trained on: its test split scores both bundles
    out: str  # the new bundle's directory, relative to the job file
    quantize: Literal["int8"] | None = None
    prune: float | None = Field(None, ge=0, lt=1)  # sparsity: the fraction of each weight matrix zeroed
    finetune: int = Field(0, ge=0)  # epochs of training after pruning
    workers: int = Field(1, gt=0)  # Ray Train workers for fine-tuning

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        from cellforge.export.compress import compress

        record = compress(base / self.bundle, self.data.load(base), base / self.out, self.quantize, self.prune,
                          self.finetune, self.workers, address)
        return {"bundle": str(base / self.out), "compression": record}


class SignStep(Step):
    """Sign a bundle's manifest with an Ed25519 private key (PEM; ``cellforge keygen`` makes one): a
    deployment or ``cf.load`` with the matching verify key then refuses any other bundle."""

    kind: ClassVar[str] = "sign"
    outputs: ClassVar[tuple[str, ...]] = ("bundle", "signature")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True
    files: ClassVar[tuple[str, ...]] = ("key",)

    bundle: str
    key: str  # the private key's PEM file, relative to the job file

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        out = _bundle.sign(base / self.bundle, base / self.key)
        log.info("signed %s (%s)", base / self.bundle, out.name)
        return {"bundle": str(base / self.bundle), "signature": str(out)}


class RegisterStep(Step):
    """Register a bundle as a new version of a model in MLflow's registry (``alias``: e.g. production);
    deploy it later as ``models:/NAME@ALIAS``."""

    kind: ClassVar[str] = "register"
    outputs: ClassVar[tuple[str, ...]] = ("name", "version", "run_id", "ref")
    positional: ClassVar[tuple[str, ...]] = ("bundle",)
    reads_bundle: ClassVar[bool] = True

    bundle: str
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    alias: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")
    tracking: str | None = None  # the registry's MLflow URI (default: $MLFLOW_TRACKING_URI, else local)

    def run(self, base: Path, address: str | None) -> dict[str, Any]:
        got = registry.register(base / self.bundle, self.name, alias=self.alias, tracking_uri=self.tracking)
        ref = f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{got['version']}"
        log.info("registered %s as %s version %s (run %s)%s", base / self.bundle, self.name, got["version"],
                 got["run_id"], f"; {ref} points at it" if self.alias else "")
        return {"name": self.name, "version": got["version"], "run_id": got["run_id"], "ref": ref}


STEPS: dict[str, type[Step]] = {s.kind: s for s in (TrainStep, EvaluateStep, PredictStep, DetectStep, SweepStep,
                                                     DeployStep, ExportStep, CompressStep, SignStep, RegisterStep)}


def _short(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v[:6]) + (
            ", ...]" if len(v) > 6 else "]")
    return f"{v:.4g}" if isinstance(v, float) else str(v)
