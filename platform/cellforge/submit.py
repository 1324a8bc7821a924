"""Ray Jobs: submit a job file or a notebook to a Ray cluster, then follow it.

    cellforge submit jobs/forecast.yaml --address http://HEAD:8265 --wait
    cellforge submit notebooks/01_quickstart.ipynb -p epochs=3 --address http://HEAD:8265
    cellforge jobs list | status ID | logs ID [--follow] | stop ID

The job carries this project with it (Ray's ``runtime_env``): the ``cellforge`` package as a
``py_module`` (the cluster runs the code you have, not what it has installed) and the project
directory (job files, their data, notebooks) as ``working_dir``, minus what .gitignore and
``EXCLUDES`` leave out. Token authentication (``RAY_AUTH_MODE=token``, Ray's default for new
clusters since 2.59) is honoured: the token comes from ``$RAY_AUTH_TOKEN``,
``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, as for Ray's own CLI, and goes in an
``Authorization: Bearer`` header on every request to the cluster's job server.

Ray deletes a job's ``working_dir`` with its session, so a submitted job writes its runs, bundles
and tracking data to a durable root instead (``$CELLFORGE_RUNS``, else ``~/cellforge/runs`` on the
head node; ``cellforge.jobs.durable``), announced here before the job starts; ``jobs status`` reads
the job's record back (from the root when this machine sees it, else from the job's logs).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cellforge.errors import SpecError
from cellforge.jobs import durable, parse_job
from cellforge.log import log

PACKAGE = Path(__file__).resolve().parent  # the cellforge package, shipped with every job

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# never uploaded: environments, run outputs, caches (platform/ travels as the cellforge py_module)
EXCLUDES = [".venv/", "venv/", "runs/", ".git/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/",
            ".ipynb_checkpoints/", "platform/", "build/"]


def dashboard_address(address: str | None = None) -> str:
    """The job server's URL: ``address``, ``$RAY_API_SERVER_ADDRESS``, an http ``$RAY_ADDRESS``,
    or the local default ``http://127.0.0.1:8265``."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address and os.environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = os.environ["RAY_ADDRESS"]
    return address or DEFAULT_ADDRESS


def auth_token() -> str | None:
    """The cluster token, looked up as Ray's CLI does (env var, token file, ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(path).expanduser() if path else Path.home() / ".ray" / "auth_token"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    return None


def client(address: str | None = None):
    """A JobSubmissionClient for ``address`` that sends the cluster token when there is one."""
    from ray.exceptions import RayError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except (ConnectionError, RuntimeError, RayError) as e:
        raise cluster_error(url, e, "cannot reach the Ray job server at") from None


def cluster_error(url: str, e: Exception, what: str = "the Ray job server at") -> SpecError:
    """One clear line for a failed request to the job server (unreachable, refused, unknown job)."""
    hint = "" if auth_token() else (" No Ray auth token was found ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or "
                                    "~/.ray/auth_token); a cluster with token authentication refuses requests "
                                    "without it.")
    return SpecError([("address", f"{what} {url}: {_first_line(e)}{hint}")], what="cluster request")


def project_root(path: Path) -> Path:
    """The nearest directory above ``path`` with a pyproject.toml (else the file's own directory)."""
    for d in path.resolve().parents:
        if (d / "pyproject.toml").is_file():
            return d
    return path.resolve().parent


def runtime_env(root: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"working_dir": str(root), "py_modules": [str(PACKAGE)],
            "excludes": EXCLUDES, "env_vars": dict(env or {})}


def parse_pairs(pairs: list[str] | None, what: str, as_yaml: bool) -> dict[str, Any]:
    """``["epochs=3", "cell=gru"]`` -> ``{"epochs": 3, "cell": "gru"}`` (values read as YAML when asked)."""
    out, problems = {}, []
    for p in pairs or []:
        key, eq, value = p.partition("=")
        if not eq or not key.strip():
            problems.append((what, f"expected NAME=VALUE, got {p!r}"))
            continue
        out[key.strip()] = yaml.safe_load(value) if as_yaml else value
    if problems:
        raise SpecError(problems, what="arguments")
    return out


def submit(target: str | Path, address: str | None = None, *, params: dict[str, Any] | None = None,
           env: dict[str, str] | None = None, output: str | None = None, submission_id: str | None = None) -> str:
    """Submit a job file (``.yaml``) or a notebook (``.ipynb``) as a Ray job; returns its id.

    A job file is validated here first: a broken one is never submitted. A notebook runs with
    papermill on the cluster, with ``params`` injected after its ``parameters`` cell, and the
    executed notebook is written to ``output`` (a directory on the cluster, default
    ``$CELLFORGE_RUNS/notebooks`` or ``runs/notebooks`` under the job's working directory; papermill
    also writes to ``s3://`` and other remote paths).

    Example:
        >>> submit("jobs/forecast.yaml", "http://127.0.0.1:8265")   # doctest: +SKIP
        'cellforge-forecast-20250101-120000-1a2b'
    """
    path = Path(target)
    if not path.is_file():
        raise SpecError([("target", f"file not found: {path}")], what="submission")
    root = project_root(path)
    rel = path.resolve().relative_to(root).as_posix()
    sid = submission_id or f"cellforge-{_slug(path.stem)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    env = job_env(env, sid)
    runs = durable.announced(env)
    meta = {"cellforge": "1", "source": rel, "runs": runs}
    if env.get(durable.SETTING):  # where `jobs status` looks for the job's record
        meta["runs_root"] = env[durable.SETTING]
    if path.suffix in (".yaml", ".yml"):
        if params:
            raise SpecError([("params", "-p applies to notebooks; a job file takes its settings from the file")],
                            what="submission")
        parse_job(path, paths=_check_paths(env, root))
        entry = f"python -m cellforge.cli run {_quote(rel)}"
        meta["kind"] = "job"
    elif path.suffix == ".ipynb":
        _check_parameters(path, params or {})
        out_dir = output or os.environ.get("CELLFORGE_NOTEBOOK_OUTPUT") or _notebooks_dir(env)
        out = f"{out_dir.rstrip('/')}/{path.stem}-{sid}.ipynb"
        args = " ".join(f"-p {_quote(f'{k}={yaml.safe_dump(v, default_flow_style=True).strip()}')}"
                        for k, v in (params or {}).items())
        entry = f"python -m cellforge.notebook_job {_quote(rel)} {_quote(out)} {args}".strip()
        meta.update(kind="notebook", output=out)
    else:
        raise SpecError([("target", f"expected a job file (.yaml) or a notebook (.ipynb), got {path.name!r}")],
                        what="submission")
    log.info("%s: runs, bundles and tracking data go to %s", sid, runs)
    jc = client(address)
    return jc.submit_job(entrypoint=entry, submission_id=sid, runtime_env=runtime_env(root, env), metadata=meta)


def job_env(env: dict[str, str] | None, submission_id: str) -> dict[str, str]:
    """The job's environment variables: ``-e`` ones, ``$CELLFORGE_RUNS`` of this environment when ``-e``
    does not set it (the user's configured storage), and the submission id (which makes the job write
    to its durable root, see ``cellforge.jobs.durable``). A bad ``CELLFORGE_RUNS`` is refused here."""
    env = dict(env or {})
    if not env.get(durable.SETTING) and os.environ.get(durable.SETTING):
        env[durable.SETTING] = os.environ[durable.SETTING]
    if env.get(durable.SETTING):
        durable.Root.parse(env[durable.SETTING], expand_home=False)
    env[durable.SUBMISSION] = submission_id
    return env


def _check_paths(env: dict[str, str], project: Path) -> durable.JobPaths:
    """The mapping a submitted job will make, for checking the job file here: its durable root when
    this machine sees it (the same machine or a shared mount), else a stand-in."""
    value = env.get(durable.SETTING)
    root = durable.Root.parse(value) if value else None
    if root is None or root.path is None:
        root = durable.Root(Path("/nonexistent/cellforge-durable-root"))
    return durable.JobPaths(root, project)


def _notebooks_dir(env: dict[str, str]) -> str:
    value = env.get(durable.SETTING)
    return durable.Root.parse(value, expand_home=False).join("notebooks") if value else f"{durable.DEFAULT}/notebooks"


def _check_parameters(path: Path, params: dict[str, Any]) -> None:
    import papermill

    declared = papermill.inspect_notebook(str(path))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise SpecError([(f"params.{k}", f"not a parameter of {path.name}; its parameters: {sorted(declared)}")
                         for k in unknown], what="submission")


def follow(submission_id: str, address: str | None = None, out=None) -> str:
    """Print a job's logs as they come until it ends; returns its final status ('SUCCEEDED', ...)."""
    jc = client(address)
    out = out or sys.stdout

    async def tail():
        async for lines in jc.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(tail())
    else:  # a notebook already runs an event loop in this thread: tail from another thread
        import threading

        worker = threading.Thread(target=lambda: asyncio.run(tail()))
        worker.start()
        worker.join()
    status = jc.get_job_status(submission_id)
    while not status.is_terminal():  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        status = jc.get_job_status(submission_id)
    return str(status.value)


def job_record(jc, submission_id: str, metadata: dict[str, str]) -> dict[str, Any] | None:
    """What a submitted job wrote about itself (its durable root, each step's bundle): the record in its
    durable root when this machine can read it (it outlives the cluster), else the record line at the end
    of its logs (the job server keeps them while the cluster is up); None while neither exists yet.
    Ray job metadata is fixed at submission, so it holds only the announced root."""
    record = durable.read_record(metadata["runs_root"], submission_id) if metadata.get("runs_root") else None
    if record:
        return record
    try:
        logs = jc.get_job_logs(submission_id)
    except RuntimeError:
        return None
    return durable.record_from_logs(logs)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in s)[:40]


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ------------------------------------------------------------------------- CLI
def _requests_to_cluster(command):
    """Turn the job server's refusals (HTTP errors the SDK raises as RuntimeError) into one clear line."""

    def run(args) -> int:
        from ray.exceptions import RayError  # AuthenticationError: a missing or wrong token

        try:
            return command(args)
        except (RuntimeError, ConnectionError, RayError) as e:
            raise cluster_error(dashboard_address(args.address), e) from None

    return run


@_requests_to_cluster
def _cmd_submit(args) -> int:
    sid = submit(args.target, args.address, params=parse_pairs(args.param, "params", as_yaml=True),
                 env=parse_pairs(args.env, "env", as_yaml=False), output=args.output)
    log.info("submitted %s to %s", sid, dashboard_address(args.address))
    if not args.wait:
        log.info("follow it with: cellforge jobs logs %s --follow --address %s", sid, dashboard_address(args.address))
        return 0
    status = follow(sid, args.address)
    log.info("%s: %s", sid, status)
    return 0 if status == "SUCCEEDED" else 1


@_requests_to_cluster
def _cmd_jobs(args) -> int:
    jc = client(args.address)
    if args.action == "list":
        jobs = sorted(jc.list_jobs(), key=lambda j: j.start_time or 0)
        print(f"{'SUBMISSION ID':<48} {'STATUS':<10} {'STARTED':<19} SOURCE")
        for j in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
            print(f"{j.submission_id or j.job_id or '-':<48} {j.status.value:<10} {started:<19} "
                  f"{(j.metadata or {}).get('source', j.entrypoint)}")
        return 0
    if not args.id:
        raise SpecError([("id", f"'jobs {args.action}' needs a submission id (see 'cellforge jobs list')")],
                        what="arguments")
    if args.action == "status":
        info = jc.get_job_info(args.id)
        print(f"{args.id}: {info.status.value}" + (f" — {info.message}" if info.message else ""))
        meta = info.metadata or {}
        if meta.get("output"):
            print(f"executed notebook: {meta['output']}")
        record = job_record(jc, args.id, meta)
        if record:
            print(f"runs, bundles and tracking data: {record['root']}")
            for sid, where in record.get("bundles", {}).items():
                print(f"bundle ({sid}): {where}")
            for sid, artifact in (record.get("tracked") or {}).items():
                print(f"tracked ({sid}): {artifact} in {record.get('tracking_uri')}")
        elif meta.get("runs"):
            print(f"runs, bundles and tracking data: {meta['runs']}")
        return 0
    if args.action == "logs":
        if args.follow:
            status = follow(args.id, args.address)
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(jc.get_job_logs(args.id))
        return 0
    stopped = jc.stop_job(args.id)
    print(f"{args.id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def register(sub) -> None:
    """Add ``submit`` and ``jobs`` to the cellforge CLI."""
    addr = "the cluster's job server, e.g. http://HEAD:8265 (default $RAY_API_SERVER_ADDRESS, " \
           f"an http $RAY_ADDRESS, or {DEFAULT_ADDRESS})"
    s = sub.add_parser("submit", help="submit a job file or a notebook to a Ray cluster as a Ray job")
    s.add_argument("target", help="a job file (.yaml) or a notebook (.ipynb)")
    s.add_argument("--address", help=addr)
    s.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="notebook parameter (value read as YAML: 3, 0.01, gru, [1, 2]); repeatable")
    s.add_argument("-e", "--env", action="append", metavar="NAME=VALUE",
                   help="environment variable for the job, e.g. CELLFORGE_RUNS=/shared/runs; repeatable")
    s.add_argument("--output", help="where the executed notebook goes on the cluster (a directory)")
    s.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 1 unless it succeeded")
    s.set_defaults(fn=_cmd_submit)
    j = sub.add_parser("jobs", help="list Ray jobs, or show the status or logs of one, or stop it")
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("id", nargs="?", help="submission id")
    j.add_argument("--address", help=addr)
    j.add_argument("--follow", "-f", action="store_true", help="logs: keep following until the job ends")
    j.set_defaults(fn=_cmd_jobs)
