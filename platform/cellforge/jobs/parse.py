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
a class in ``cellforge.jobs.steps.STEPS`` that declares its fields, its outputs and ``run()``.
A reference ``${id.output}`` to a step that does not come earlier, or to an output it does not
make, fails validation with the field path that holds it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from cellforge.errors import SpecError, Strict, problems_of
from cellforge.jobs.durable import JobPaths
from cellforge.jobs.steps import REF, STEPS, Step, has_ref
from cellforge.log import log
from cellforge.registry import parse_ref
from cellforge.serving.deploy import hold


class Job(Strict):
    what = "job file"

    name: str = "job"
    address: str | None = None  # Ray cluster; default $RAY_ADDRESS or the embedded local Ray
    # how much cellforge logs while the job runs (its workers included): progress at info
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    steps: list[dict[str, Any]] = Field(min_length=1)


def parse_job(source: str | Path | dict, base: Path | None = None, paths: JobPaths | None = None
              ) -> tuple[Job, list[tuple[str, Step]], Path]:
    """Validate a job file: (job, [(kind, step)], base directory). Raises one SpecError.

    ``base``: where a job given as a mapping resolves its relative paths (default: the current directory).
    ``paths``: a submitted job's durable root, where its outputs go (``cellforge.jobs.durable``).
    """
    base = base or Path.cwd()
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
    for kind, step, _, _ in _parse_steps(job, base, problems, paths):
        steps.append((kind, step))
    if problems:
        raise SpecError(problems, what="job file")
    return job, steps, base


def _parse_steps(job: Job, base: Path, problems: list, paths: JobPaths | None = None
                 ) -> list[tuple[str, Step | None, str, dict]]:
    """Each step as (kind, model, id, raw body); appends every problem found to ``problems``. With
    ``paths`` (a submitted job), the body's paths are first mapped into the durable root."""
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
        if paths is not None and isinstance(body, dict):
            body = paths.rewrite(STEPS[kind], body, base, where, problems)
        step = None
        try:
            step = STEPS[kind].model_validate(body)
        except ValidationError as e:
            problems += problems_of(e, where)
        if not isinstance(body, dict):
            continue
        problems += _check_refs(body, where, kinds)
        problems += _check_files(STEPS[kind], body, base, where, produced)
        sid = body.get("id") if isinstance(body.get("id"), str) else _next_id(kind, kinds)
        if sid in kinds:
            problems.append((f"{where}.id", f"step id {sid!r} is already used by an earlier step"))
        kinds[sid] = kind
        if isinstance(body.get("bundle"), str) and not has_ref(body["bundle"]):
            produced.add((base / body["bundle"]).resolve())
        out.append((kind, step, sid, body))
    return out


def _check_refs(body: Any, where: str, kinds: dict[str, str]) -> list[tuple[str, str]]:
    problems = []
    for path, value in _strings(body, where):
        for m in REF.finditer(value):
            sid, name = m.group(1), m.group(2).split(".")[0]
            if sid not in kinds:
                problems.append((path, f"{m.group(0)} refers to step {sid!r}, but no earlier step has that id; "
                                       f"earlier steps: {sorted(kinds) or 'none'}"))
                continue
            known = STEPS[kinds[sid]].outputs
            if name not in known:
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


def _check_files(step: type[Step], body: dict[str, Any], base: Path, where: str, produced: set[Path]
                 ) -> list[tuple[str, str]]:
    """What a step's schema cannot see: the files it reads exist (or an earlier step writes them)."""
    problems = []
    for field in step.files:
        value: Any = body
        for key in field.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and not has_ref(value) and not (base / value).exists():
            problems.append((f"{where}.{field}", f"file not found: {base / value}"))
    bundle = body.get("bundle")
    if (step.reads_bundle and isinstance(bundle, str) and not has_ref(bundle)
            and not (step.takes_refs and parse_ref(bundle))
            and (base / bundle).resolve() not in produced and not (base / bundle / "manifest.json").exists()):
        problems.append((f"{where}.bundle", f"no bundle at {base / bundle}, and no earlier step writes one "
                                            "there; train one first or use ${<step id>.bundle}"))
    return problems


def run_job(source: str | Path | dict, address: str | None = None, base: Path | None = None,
            paths: JobPaths | None = None, outputs: dict[str, dict[str, Any]] | None = None
            ) -> dict[str, dict[str, Any]]:
    """Validate, then run every step in order; returns each step's outputs by id (also filled into
    ``outputs`` as each step ends, so a caller keeps what a failed job made). ``paths``: see parse_job."""
    job, _, base = parse_job(source, base, paths)
    before = log.level
    log.setLevel(job.log_level.upper())
    try:
        outputs = _run_steps(job, base, address or job.address, paths, {} if outputs is None else outputs)
    finally:
        log.setLevel(before)
    return outputs


def _run_steps(job: Job, base: Path, address: str | None, paths: JobPaths | None,
               outputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    blocks = []  # serving steps' ``block``: the endpoints are held after the last step, not in between
    for kind, _, sid, body in _parse_steps(job, base, [], paths):
        log.info("step %s (%s)", sid, kind)
        step = STEPS[kind].parse(_resolve(body, outputs))  # with earlier steps' outputs filled in
        outputs[sid] = step.run(base, address)
        if step.serves:
            blocks.append(step.block)
    log.info("outputs %s", json.dumps(outputs, default=str))
    if blocks:
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
