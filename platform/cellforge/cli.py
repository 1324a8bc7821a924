"""The ``cellforge`` command: a thin layer over the Python API.

    cellforge run jobs/quickstart.yaml        # run a job file on the embedded Ray (or --address)
    cellforge validate jobs/quickstart.yaml   # check a job file, every problem at once
    cellforge train spec.yaml --data digits --workers 2 --epochs 3
    cellforge evaluate runs/quickstart/bundle --data digits
    cellforge predict runs/quickstart/bundle --input images.json   # a bundle on disk...
    cellforge predict digits --input images.json                   # ...or a deployed model
    cellforge sweep spec.yaml --data digits --space space.yaml --trials 8
    cellforge deploy runs/quickstart/bundle --name digits --max-replicas 4
    cellforge export runs/quickstart/bundle --out digits.onnx [--step]          # or --format savedmodel
    cellforge compress runs/quickstart/bundle --data digits --quantize int8 --out runs/digits-int8
    cellforge keygen team.pem                 # an Ed25519 key pair: team.pem (private), team.pem.pub
    cellforge sign runs/quickstart/bundle --key team.pem      # serve with verify_key: team.pem.pub
    cellforge register runs/quickstart/bundle --name digits --alias production
    cellforge deploy models:/digits@production --name digits  # a registry reference
    cellforge deploy runs/v2/bundle --name digits --canary 10 --max-error-rate 0.05   # a canary
    cellforge canary digits                   # live vs canary: requests, errors, latency
    cellforge promote digits                  # or: cellforge rollback digits
    cellforge runs list                       # tracked runs (MLflow); cellforge runs compare RUN RUN
    cellforge ray status                      # the local Ray every kernel, job and command shares
    cellforge ray stop

Every step command is made from the job step of the same name (``cellforge.jobs.steps``): one
flag per field (``--config FILE`` for a YAML mapping of them), the same validation, and it runs
as a one-step job — so a field added to a step is a flag here too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cellforge import registry, tracking
from cellforge.errors import BundleError, SpecError
from cellforge.jobs import STEPS, DataRef, Step, parse_job, run_job
from cellforge.jobs.durable import Submitted
from cellforge.submit import register as register_submit

ADDRESS_HELP = "Ray cluster address (default: $RAY_ADDRESS or the local cellforge Ray)"
# flags kept from before the step commands were generated: flag -> (field path, factor)
ALIASES = {"deploy": {"batch_wait_ms": ("batching.batch_wait_timeout_s", 0.001)}}
# fields whose default comes from the environment
ENV = {"api_key": "CELLFORGE_API_KEY"}


def _run(args) -> int:
    job = Submitted.current()  # a submitted job's entrypoint (cellforge submit): outputs go to a durable root
    if job is None:
        run_job(args.job, address=args.address)
        return 0
    with job:
        run_job(args.job, address=args.address, paths=job.paths, outputs=job.outputs)
    return 0


def _validate(args) -> int:
    bad = 0
    for path in args.jobs:
        try:
            job, steps, _ = parse_job(path)
            print(f"{path}: ok ({len(steps)} step{'s' * (len(steps) != 1)}: {', '.join(k for k, _ in steps)})")
        except SpecError as e:
            print(f"{path}: {e}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


# step commands, made from the step classes ------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model inside ``X`` or ``X | None``, if any."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _is_only(annotation, kind: type) -> bool:
    """Whether ``annotation`` is ``kind`` or ``kind | None``."""
    return annotation is kind or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                                  and set(typing.get_args(annotation)) <= {kind, type(None)})


def _is_bool(annotation) -> bool:
    return _is_only(annotation, bool)


def _is_text(annotation) -> bool:
    return _is_only(annotation, str)


def _choices(annotation) -> list[str] | None:
    for t in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(t) is typing.Literal:
            return [str(v) for v in typing.get_args(t)]
    return None


def add_step_command(sub, step: type[Step]) -> None:
    """``cellforge <kind>``: a flag (or positional argument) per field of ``step``."""
    doc = (step.__doc__ or "").strip().splitlines()[0]
    p = sub.add_parser(step.kind, help=doc, description=doc)
    fields = step.model_fields
    top = set(fields)
    for name in step.positional:
        p.add_argument(name, metavar=name.upper(), help=_help(step, name))
    for name, info in fields.items():
        if name in step.positional or name == "id":
            continue
        ann = info.annotation
        env = os.environ.get(ENV[name]) if name in ENV else None
        nested = _model_of(ann)
        if _is_bool(ann):
            p.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif nested is DataRef:
            p.add_argument(_flag(name), dest=name, metavar="DATASET|FILE",
                           help="a built-in data set's name, or a CSV/Parquet file")
        elif nested is None:
            p.add_argument(_flag(name), dest=name, default=env, choices=_choices(ann),
                           metavar=None if _choices(ann) else name.upper(), help=_help(step, name))
        else:  # a nested config (autoscaling, batching): a flag per field of it (or set it in --config)
            for sub_name, sub_info in nested.model_fields.items():
                dest = f"{name}.{sub_name}"
                if _is_bool(sub_info.annotation) and sub_name == "enabled":  # --batching / --no-batching
                    p.add_argument(_flag(name), dest=dest, action=argparse.BooleanOptionalAction, default=None)
                elif sub_name not in top:
                    p.add_argument(_flag(sub_name), dest=dest, default=None, metavar=sub_name.upper(),
                                   help=f"{name}.{sub_name}")
    for alias, (path, _) in ALIASES.get(step.kind, {}).items():
        p.add_argument(_flag(alias), dest=f"alias:{alias}", default=None, help=f"{path}, in other units")
    p.add_argument("--config", help="a YAML file of this step's fields; flags override it")
    p.add_argument("--address", help=ADDRESS_HELP)
    if step.kind == "predict":  # predict also answers from a deployed model, by name
        p.set_defaults(fn=_predict, step_class=step)
        p.add_argument("--url", default=os.environ.get("CELLFORGE_URL", "http://127.0.0.1:8000"),
                       help="a deployed model's server (when BUNDLE is a model name, not a directory)")
        p.add_argument("--api-key", default=os.environ.get("CELLFORGE_API_KEY"))
    else:
        p.set_defaults(fn=_step, step_class=step)


def _help(step: type[Step], name: str) -> str | None:
    info = step.model_fields[name]
    if info.is_required():
        return "required"
    return None if info.default is None else f"default {info.default!r}"


def step_body(step: type[Step], args: argparse.Namespace) -> dict[str, Any]:
    """The step's fields from ``--config`` and the flags (flags win)."""
    body: dict[str, Any] = {}
    if getattr(args, "config", None):
        body = _yaml(args.config, "--config") or {}
        if not isinstance(body, dict):
            raise SpecError([("--config", "expected a YAML mapping of the step's fields")], what="command line")
    for name, info in step.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "data" and isinstance(value, str):
            value = DataRef.from_cli(value)
        elif name in ("spec", "space"):
            value = _yaml(value, name)
        elif isinstance(value, str) and not _is_text(info.annotation):
            value = yaml.safe_load(value)  # numbers, lists and mappings as YAML: --columns '[a, b]'
        body[name] = value
    for dest, value in vars(args).items():
        if value is None or dest.startswith("alias:") or "." not in dest:
            continue
        parent, leaf = dest.split(".", 1)
        body.setdefault(parent, {})
        if isinstance(body[parent], dict):
            body[parent][leaf] = yaml.safe_load(value) if isinstance(value, str) else value
    for alias, (path, factor) in ALIASES.get(step.kind, {}).items():
        value = getattr(args, f"alias:{alias}", None)
        if value is not None:
            parent, leaf = path.split(".", 1)
            body.setdefault(parent, {})[leaf] = float(value) * factor
    return body


def _yaml(value: str, field: str) -> Any:
    """A YAML file's contents, or the value itself read as YAML."""
    path = Path(value)
    try:
        text = path.read_text() if path.suffix in (".yaml", ".yml", ".json") or path.is_file() else value
        return yaml.safe_load(text)
    except OSError as e:
        raise SpecError([(field, f"cannot read {value}: {e.strerror}")], what="command line") from None
    except yaml.YAMLError as e:
        raise SpecError([(field, f"not valid YAML: {e}")], what="command line") from None


def _step(args, log_level: str = "info") -> int:
    """Run one step as a one-step job (the same validation as a job file's)."""
    step: type[Step] = args.step_class
    run_job({"name": step.kind, "log_level": log_level, "steps": [{step.kind: step_body(step, args)}]},
            address=args.address, base=Path.cwd())
    return 0


def _predict(args) -> int:
    """``cellforge predict BUNDLE|MODEL``: a bundle directory runs the predict step (printing the
    predictions when there is no ``--output``); anything else is a deployed model's name."""
    if Path(args.bundle).is_dir():
        if args.output is not None:
            return _step(args)
        with tempfile.TemporaryDirectory() as tmp:
            args.output = str(Path(tmp) / "predictions.json")
            _step(args, log_level="warning")  # stdout is the predictions alone, ready for a pipe
            print(Path(args.output).read_text())
        return 0
    return _predict_remote(args)


def _predict_remote(args) -> int:
    if args.input is None:
        print("cellforge: predict needs --input (a JSON file, or - for stdin)", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"cellforge: --input is not valid JSON: {e}", file=sys.stderr)
        return 2
    inputs = data["inputs"] if isinstance(data, dict) and "inputs" in data else data
    return _ask(args, lambda client: print(json.dumps(client.predict(args.bundle, inputs))),
                "is the model deployed? see --url")


def _ask(args, use, hint: str) -> int:
    """``use(client)`` against the server at ``--url``: 0, or 1 with the server's refusal or why it
    could not be reached on stderr."""
    import httpx

    from cellforge.client import Client, RequestError

    try:
        with Client(args.url, api_key=args.api_key) as client:
            use(client)
    except RequestError as e:
        print(f"cellforge: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:
        print(f"cellforge: cannot reach {args.url} ({e}); {hint}", file=sys.stderr)
        return 1
    return 0


def _ray_status(args) -> int:
    from cellforge import local_ray

    s = local_ray.state()
    if s is None:
        print(f"no local cellforge Ray under {local_ray.home()} (the next kernel, job or command starts one)")
        return 1
    users = local_ray.clients()
    print(f"local cellforge Ray at {s['address']}: pid {s['pid']}, {s['cpus']} CPUs, up "
          f"{(time.time() - s['started']) / 60:.0f} min; used by {len(users)} process(es)"
          + (f" ({', '.join(map(str, users))})" if users else "") + f"; home {local_ray.home()}"
          + (f"; Prometheus metrics at {s['metrics']}" if "metrics" in s else ""))
    return 0


def _ray_stop(args) -> int:
    from cellforge import local_ray

    if not local_ray.stop():
        print(f"no local cellforge Ray under {local_ray.home()}")
        return 0
    print("local cellforge Ray stopped")
    return 0


# tracked runs and keys: cellforge runs list|compare, cellforge keygen --------------------------------------------
def add_record_commands(sub) -> None:
    """``cellforge runs list``, ``cellforge runs compare RUN RUN...`` and ``cellforge keygen KEY``."""
    r = sub.add_parser("runs", help="tracked runs (MLflow): list them, compare them")
    r_sub = r.add_subparsers(dest="runs_command", required=True)
    ls = r_sub.add_parser("list", help="every run, newest first")
    ls.add_argument("--kind", choices=["fit", "sweep", "trial", "register"])
    ls.add_argument("--tracking", help="an MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(fn=_runs_list)
    cmp = r_sub.add_parser("compare", help="runs side by side: differing parameters, then metrics")
    cmp.add_argument("runs", nargs="+", metavar="RUN_ID")
    cmp.add_argument("--tracking")
    cmp.set_defaults(fn=_runs_compare)
    k = sub.add_parser("keygen", help="a new Ed25519 key pair for `cellforge sign` (KEY and KEY.pub)")
    k.add_argument("key")
    k.set_defaults(fn=_keygen)


def _runs_list(args) -> int:
    df = registry.runs(args.kind, tracking_uri=args.tracking, max_results=args.limit)
    if df.empty:
        print(f"no runs in {tracking.redact(tracking.resolve(args.tracking))}")
        return 0
    metrics = [c for c in df.columns if c.startswith("metrics.test_") or c.startswith("metrics.best_")]
    cols = ["run_id", "run_name", "kind", "status", "start", "data", *metrics]
    print(df[cols].rename(columns=lambda c: c.removeprefix("metrics.")).to_string(index=False))
    return 0


def _runs_compare(args) -> int:
    print(registry.compare(args.runs, tracking_uri=args.tracking).to_string())
    return 0


def _keygen(args) -> int:
    from cellforge import signing

    private, public = signing.keygen(args.key)
    print(f"private key {private} (keep it secret: `cellforge sign BUNDLE --key {private}`)\n"
          f"public key  {public} (the verify key: CELLFORGE_VERIFY_KEY={public})")
    return 0


# traffic control: cellforge promote|rollback|canary NAME ----------------------------------------------
def add_traffic_commands(sub) -> None:
    """``cellforge promote NAME``, ``cellforge rollback NAME`` and ``cellforge canary NAME`` (the canary
    beside the live version); a canary is deployed with ``cellforge deploy BUNDLE --name NAME --canary PCT``."""
    for name, fn, doc in (("promote", _promote, "make a model's canary its live version"),
                          ("rollback", _rollback, "send a model's canary no more traffic and remove it")):
        p = sub.add_parser(name, help=doc, description=doc)
        p.add_argument("name", metavar="NAME", help="the model's name")
        p.add_argument("--address", help=ADDRESS_HELP)
        p.set_defaults(fn=fn)
    p = sub.add_parser("canary", help="a model's live and canary versions side by side: requests, errors, latency")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--url", default=os.environ.get("CELLFORGE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("CELLFORGE_API_KEY"))
    p.set_defaults(fn=_canary)


def _promote(args) -> int:
    from cellforge.serving.deploy import promote

    ep = promote(args.name, address=args.address)
    print(f"{ep.name}: version {ep.version} is live at {ep.url}")
    return 0


def _rollback(args) -> int:
    from cellforge.serving.deploy import rollback

    c = rollback(args.name, address=args.address)
    print(f"{args.name}: canary {c['version'] or '(no record)'} rolled back ({c['reason'] or 'its app removed'}); "
          f"the live version answers everything")
    return 0


def _canary(args) -> int:
    return _ask(args, lambda client: print(canary_report(client.metrics(args.name))), "see --url")


def canary_report(m: dict[str, Any]) -> str:
    """A model's ``GET .../metrics`` as the ``cellforge canary`` table.

        >>> print(canary_report({"model": "digits", "version": "aaa", "canary": None, "versions": {
        ...     "aaa": {"requests": 90, "errors": 0, "error_rate": 0.0, "p50_ms": 2.33, "p99_ms": 7.1}}}))
        digits: no canary (live version aaa)
        version       role     requests  errors  error rate  p50 ms  p99 ms
        aaa           live           90       0       0.00%    2.33     7.1
    """
    c, live = m.get("canary"), m["version"]
    if c is None:
        head = f"{m['model']}: no canary (live version {live})"
    else:
        auto = (f"; rolled back by itself above {c['max_error_rate']:.1%} errors over {c['min_requests']} requests"
                if c["max_error_rate"] is not None else "")
        head = (f"{m['model']}: canary {c['version']} takes {c['canary']:g}% of new predictions and sessions "
                f"(live {live}): {c['state']}" + (f" ({c['reason']})" if c["reason"] else "") + auto)
    rows = [head, f"{'version':<13} {'role':<8} {'requests':>8} {'errors':>7} {'error rate':>11} {'p50 ms':>7} {'p99 ms':>7}"]
    for v, s in m.get("versions", {}).items():
        role = "live" if v == live else "canary" if c and v == c["version"] else "retired"
        rate = "-" if s["error_rate"] is None else f"{s['error_rate']:.2%}"
        rows.append(f"{v:<13} {role:<8} {s['requests']:>8} {s['errors']:>7} {rate:>11} "
                    f"{s['p50_ms'] if s['p50_ms'] is not None else '-':>7} {s['p99_ms'] if s['p99_ms'] is not None else '-':>7}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellforge", description="Recurrent models on Ray: train, sweep, serve.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a job file")
    r.add_argument("job")
    r.add_argument("--address", help=ADDRESS_HELP)
    r.set_defaults(fn=_run)
    v = sub.add_parser("validate", help="validate job files without running them")
    v.add_argument("jobs", nargs="+")
    v.set_defaults(fn=_validate)
    for step in STEPS.values():
        add_step_command(sub, step)
    register_submit(sub)  # submit, jobs: Ray jobs on a cluster
    add_record_commands(sub)  # runs list|compare, keygen
    add_traffic_commands(sub)  # promote, rollback, canary
    ray_cmd = sub.add_parser("ray", help="this machine's local cellforge Ray (every kernel, job and command shares it)")
    ray_sub = ray_cmd.add_subparsers(dest="ray_command", required=True)
    ray_sub.add_parser("status", help="its address, age and users").set_defaults(fn=_ray_status)
    ray_sub.add_parser("stop", help="stop it and every process it started").set_defaults(fn=_ray_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (SpecError, BundleError) as e:
        print(f"cellforge: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
