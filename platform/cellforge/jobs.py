"""Job files: a YAML pipeline of steps, validated whole before anything runs.

    name: quickstart
    steps:
      - train:
          data: {dataset: digits}
          spec: {task: classify, cell: lstm, hidden_size: 64}
          workers: 2

Run it with ``cellforge run jobs/quickstart.yaml``; check it with ``cellforge validate``.
Each step kind is a pydantic model in ``STEPS``; later issues add kinds there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


STEPS: dict[str, type[BaseModel]] = {"train": TrainStep}


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
        try:
            step = STEPS[kind].model_validate(body)
            steps.append((kind, step))
        except ValidationError as e:
            problems += problems_of(e, f"{where}.{kind}")
        problems += _check_contents(body, base, f"{where}.{kind}")
    if problems:
        raise SpecError(problems, what="job file")
    return job, steps, base


def _check_contents(body: dict[str, Any], base: Path, where: str) -> list[tuple[str, str]]:
    """What a step's schema cannot see: the spec inside it, files it names."""
    problems = []
    if isinstance(body.get("spec"), dict):
        try:
            ModelSpec.parse(body["spec"], prefix=f"{where}.spec")
        except SpecError as e:
            problems += e.problems
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and not (base / data["path"]).exists():
        problems.append((f"{where}.data.path", f"file not found: {base / data['path']}"))
    return problems


def run_job(source: str | Path | dict, address: str | None = None) -> dict[str, dict[str, Any]]:
    """Validate, then run every step in order; returns each step's outputs by id."""
    job, steps, base = parse_job(source)
    outputs: dict[str, dict[str, Any]] = {}
    for kind, step in steps:
        sid = getattr(step, "id", None) or _next_id(kind, outputs)
        print(f"[cellforge] step {sid} ({kind})", flush=True)
        outputs[sid] = RUNNERS[kind](step, base, address or job.address)
    return outputs


def _next_id(kind: str, outputs: dict) -> str:
    n = 1
    while (kind if n == 1 else f"{kind}{n}") in outputs:
        n += 1
    return kind if n == 1 else f"{kind}{n}"


def run_train(step: TrainStep, base: Path, address: str | None) -> dict[str, Any]:
    import cellforge as cf

    result = cf.fit(ModelSpec.parse(step.spec), step.data.load(base), workers=step.workers, use_gpu=step.use_gpu,
                    epochs=step.epochs, name=step.name, bundle_path=(base / step.bundle) if step.bundle else None,
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


RUNNERS = {"train": run_train}
