"""Job files: a YAML pipeline of steps, validated whole before anything runs.

    name: digits
    steps:
      - train:
          id: digits
          data: {dataset: digits}
          spec: {task: classify, cell: lstm, hidden_size: 64}
          workers: 2
      - evaluate:
          bundle: ${digits.bundle}      # an earlier step's output
          data: {dataset: digits}

Run it with ``cellforge run JOB``; check it with ``cellforge validate JOB``. Each step kind is
a pydantic model in ``STEPS``, run by ``RUNNERS[kind](step, base, address) -> outputs``, and
names the outputs a later step may use in ``OUTPUTS[kind]`` (or a ``outputs`` class
attribute). A reference ``${id.output}`` to a step that does not come earlier, or to an output
it does not make, fails validation with the field path that holds it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cellforge.spec import ModelSpec, SpecError, problems_of


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataRef(_Strict):
    """Where a step's data comes from: a built-in data set or a file (relative to the job file)."""

    dataset: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the built-in data set
    path: str | None = None  # CSV or Parquet

    @model_validator(mode="after")
    def _one(self):
        from cellforge.data.datasets import DATASETS

        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset' or 'path'")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; known data sets: {sorted(DATASETS)}")
        return self

    def load(self, base: Path):
        from cellforge.data import datasets

        if self.dataset:
            return datasets.load(self.dataset, **self.args)
        return (base / self.path).resolve()


class TrainStep(_Strict):
    id: str | None = None  # how later steps refer to this one (default: 'train', 'train2', ...)
    data: DataRef
    spec: dict[str, Any] = Field(default_factory=dict)  # ModelSpec fields
    workers: int = Field(1, gt=0)
    use_gpu: bool = False
    epochs: int | None = Field(None, gt=0)
    name: str | None = None  # run name: rerunning resumes from its last checkpoint
    bundle: str | None = None  # where to save the bundle (relative to the job file)
    max_failures: int = Field(0, ge=0)
    show: int = Field(5, ge=0)  # test predictions to print next to the truth


class EvaluateStep(_Strict):
    """A bundle + data with targets -> metrics."""

    id: str | None = None
    bundle: str  # a bundle directory (relative to the job file) or ${step.bundle}
    data: DataRef
    # 'test' re-creates the bundle's own held-out split of this data (same fractions and seed)
    split: Literal["test", "val", "train", "all"] = "test"
    framework: Literal["torch", "tensorflow", "numpy"] | None = None  # runtime; default as trained


class PredictStep(_Strict):
    """A bundle + an input file (CSV/TSV/Parquet/JSON) -> predictions written to a CSV or JSON file."""

    id: str | None = None
    bundle: str
    input: str  # relative to the job file
    output: str  # .csv or .json, relative to the job file
    columns: list[str] | None = None  # feature (or text) columns; default: every other numeric column
    group: str | None = None  # rows sharing this column form one sequence; default the spec's input.group
    framework: Literal["torch", "tensorflow", "numpy"] | None = None

    @field_validator("output")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not v.endswith((".csv", ".json")) and not REF.search(v):
            raise ValueError("expected a .csv or .json file")
        return v


STEPS: dict[str, type[BaseModel]] = {"train": TrainStep, "evaluate": EvaluateStep, "predict": PredictStep}

# what each step kind returns, for ``${id.output}`` references (a step model may instead
# declare a ``outputs`` class attribute)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": ("bundle", "metrics"), "evaluate": ("metrics",), "predict": ("output", "rows"),
    "sweep": ("bundle", "best", "leaderboard"), "deploy": ("name", "url", "version"),
}
REF = re.compile(r"\$\{\s*([A-Za-z_][\w-]*)\.([A-Za-z_][\w.-]*?)\s*\}")


class Job(_Strict):
    name: str = "job"
    address: str | None = None  # Ray cluster; default $RAY_ADDRESS or the embedded local Ray
    steps: list[dict[str, Any]] = Field(min_length=1)


def parse_job(source: str | Path | dict) -> tuple[Job, list[tuple[str, BaseModel]], Path]:
    """Validate a job file: (job, [(kind, step model)], base directory). Raises one SpecError."""
    base = Path.cwd()
    if isinstance(source, (str, Path)) and not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise SpecError([("", f"job file not found: {path}")], what="job file")
        base = path.resolve().parent
        try:
            source = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpecError([("", f"not valid YAML: {e}")], what="job file") from None
    if not isinstance(source, dict):
        raise SpecError([("", "a job file is a mapping with 'steps'")], what="job file")
    problems: list[tuple[str, str]] = []
    try:
        job = Job.model_validate(source)
    except ValidationError as e:
        raise SpecError(problems_of(e), what="job file") from None
    steps = []
    for kind, step, _, _ in _parse_steps(job, base, problems):
        steps.append((kind, step))
    if problems:
        raise SpecError(problems, what="job file")
    return job, steps, base


def _parse_steps(job: Job, base: Path, problems: list) -> list[tuple[str, BaseModel | None, str, dict]]:
    """Each step as (kind, model, id, raw body); appends every problem found to ``problems``."""
    out = []
    kinds: dict[str, str] = {}  # id -> kind, of the steps so far
    produced: set[Path] = set()  # bundle paths that earlier steps write
    for i, item in enumerate(job.steps):
        where = f"steps.{i}"
        if not isinstance(item, dict) or len(item) != 1:
            problems.append((where, f"each step is one mapping '<kind>: {{...}}' with kind in {sorted(STEPS)}"))
            continue
        (kind, body), = item.items()
        if kind not in STEPS:
            problems.append((f"{where}.{kind}", f"unknown step kind; known kinds: {sorted(STEPS)}"))
            continue
        body = body or {}
        where = f"{where}.{kind}"
        step = None
        try:
            step = STEPS[kind].model_validate(body)
        except ValidationError as e:
            problems += problems_of(e, where)
        if not isinstance(body, dict):
            continue
        problems += _check_refs(body, where, kinds)
        problems += _check_contents(body, base, where, produced)
        sid = body.get("id") if isinstance(body.get("id"), str) else _next_id(kind, kinds)
        if sid in kinds:
            problems.append((f"{where}.id", f"step id {sid!r} is already used by an earlier step"))
        kinds[sid] = kind
        if isinstance(body.get("bundle"), str) and not REF.search(body["bundle"]):
            produced.add((base / body["bundle"]).resolve())
        out.append((kind, step, sid, body))
    return out


def outputs_of(kind: str) -> tuple[str, ...] | None:
    """The outputs a step kind makes (None: not declared, so references to it are not checked)."""
    return getattr(STEPS.get(kind), "outputs", None) or OUTPUTS.get(kind)


def _check_refs(body: Any, where: str, kinds: dict[str, str]) -> list[tuple[str, str]]:
    problems = []
    for path, value in _strings(body, where):
        for m in REF.finditer(value):
            sid, name = m.group(1), m.group(2).split(".")[0]
            if sid not in kinds:
                problems.append((path, f"{m.group(0)} refers to step {sid!r}, but no earlier step has that id; "
                                       f"earlier steps: {sorted(kinds) or 'none'}"))
                continue
            known = outputs_of(kinds[sid])
            if known is not None and name not in known:
                problems.append((path, f"{m.group(0)}: step {sid!r} ({kinds[sid]}) makes no output {name!r}; "
                                       f"its outputs: {list(known)}"))
    return problems


def _strings(obj: Any, path: str):
    """(field path, value) of every string inside a step body."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{path}.{i}")


def _check_contents(body: dict[str, Any], base: Path, where: str, produced: set[Path] = frozenset()
                    ) -> list[tuple[str, str]]:
    """What a step's schema cannot see: the spec inside it, files it reads (and that exist)."""
    problems = []
    if isinstance(body.get("spec"), dict) and not any(REF.search(v) for _, v in _strings(body["spec"], "")):
        try:
            ModelSpec.parse(body["spec"], prefix=f"{where}.spec")
        except SpecError as e:
            problems += e.problems
    data = body.get("data")
    inputs = {"data.path": data.get("path") if isinstance(data, dict) else None, "input": body.get("input")}
    for field, value in inputs.items():
        if isinstance(value, str) and not REF.search(value) and not (base / value).exists():
            problems.append((f"{where}.{field}", f"file not found: {base / value}"))
    bundle = body.get("bundle")
    if (isinstance(bundle, str) and not REF.search(bundle) and READS_BUNDLE.get(_kind_of(where))
            and (base / bundle).resolve() not in produced and not (base / bundle / "manifest.json").exists()):
        problems.append((f"{where}.bundle", f"no bundle at {base / bundle}, and no earlier step writes one "
                                            "there; train one first or use ${<step id>.bundle}"))
    return problems


# step kinds whose 'bundle' field is an input (for train it is where the bundle goes)
READS_BUNDLE = {"evaluate": True, "predict": True, "deploy": True}


def _kind_of(where: str) -> str:
    return where.split(".")[2] if where.count(".") >= 2 else ""


def run_job(source: str | Path | dict, address: str | None = None) -> dict[str, dict[str, Any]]:
    """Validate, then run every step in order; returns each step's outputs by id."""
    job, _, base = parse_job(source)
    outputs: dict[str, dict[str, Any]] = {}
    address = address or job.address
    blocks = []  # deploy steps' ``block``: the endpoints are held after the last step, not in between
    for kind, _, sid, body in _parse_steps(job, base, []):
        print(f"[cellforge] step {sid} ({kind})", flush=True)
        step = STEPS[kind].model_validate(_resolve(body, outputs))  # with earlier steps' outputs filled in
        outputs[sid] = RUNNERS[kind](step, base, address)
        if kind == "deploy":
            blocks.append(step.block)
    print(f"[cellforge] outputs {json.dumps(outputs, default=str)}", flush=True)
    if blocks:
        from cellforge.serving.deploy import hold

        hold(True if True in blocks else None if None in blocks else False, address, "serving until Ctrl-C")
    return outputs


def _resolve(obj: Any, outputs: dict[str, dict[str, Any]]) -> Any:
    """Replace ``${id.output}`` references; a string that is one reference takes the output's value."""
    if isinstance(obj, dict):
        return {k: _resolve(v, outputs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, outputs) for v in obj]
    if not isinstance(obj, str):
        return obj

    def value(m: re.Match) -> Any:
        v: Any = outputs[m.group(1)]
        for key in m.group(2).split("."):
            v = v[key]
        return v

    whole = REF.fullmatch(obj.strip())
    if whole:
        return value(whole)
    return REF.sub(lambda m: str(value(m)), obj)


def _next_id(kind: str, outputs: dict) -> str:
    n = 1
    while (kind if n == 1 else f"{kind}{n}") in outputs:
        n += 1
    return kind if n == 1 else f"{kind}{n}"


def run_train(step: TrainStep, base: Path, address: str | None) -> dict[str, Any]:
    import cellforge as cf

    result = cf.fit(ModelSpec.parse(step.spec), step.data.load(base), workers=step.workers, use_gpu=step.use_gpu,
                    epochs=step.epochs, name=step.name, bundle_path=(base / step.bundle).resolve() if step.bundle else None,
                    address=address, max_failures=step.max_failures)
    model = cf.load(result.bundle)  # reload from disk: what a user would deploy
    if step.show and result.examples:
        print(f"[cellforge] {model!r}: {min(step.show, len(result.examples))} test predictions")
        for ex in result.examples[: step.show]:
            print(f"    predicted {_short(ex['prediction']):<24} truth {_short(ex['truth'])}")
    return {"bundle": str(result.bundle), "metrics": result.metrics}


def _short(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in v[:6]) + (
            ", ...]" if len(v) > 6 else "]")
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_evaluate(step: EvaluateStep, base: Path, address: str | None) -> dict[str, Any]:
    from cellforge.evaluate import evaluate

    metrics = evaluate(base / step.bundle, step.data.load(base), step.split, step.framework)
    print(f"[cellforge] {step.split} split: {'  '.join(f'{k} {v:.4g}' for k, v in metrics.items())}", flush=True)
    return {"metrics": metrics}


def run_predict(step: PredictStep, base: Path, address: str | None) -> dict[str, Any]:
    from cellforge.evaluate import predict_file

    out = predict_file(base / step.bundle, base / step.input, base / step.output, columns=step.columns,
                       group=step.group, framework=step.framework)
    print(f"[cellforge] {out['rows']} predictions written to {out['output']}", flush=True)
    return out


RUNNERS = {"train": run_train, "evaluate": run_evaluate, "predict": run_predict}

# the deploy step lives with the serving code (cellforge.serving.jobstep)
from cellforge.serving.jobstep import DeployStep, run_deploy  # noqa: E402

STEPS["deploy"] = DeployStep
RUNNERS["deploy"] = run_deploy

# the sweep step lives with the Tune driver (cellforge.tune)
from cellforge.tune import SweepStep, run_sweep  # noqa: E402

STEPS["sweep"] = SweepStep
RUNNERS["sweep"] = run_sweep
