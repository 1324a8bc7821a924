"""Where a submitted job's runs, bundles and tracking data go: a place that outlives the job.

A Ray job runs in a temporary copy of the project (Ray's ``working_dir``, under the session's temp
dir), which Ray deletes with the session. So a submitted job writes to its *durable root* instead:

1. ``CELLFORGE_RUNS`` given to the job (``cellforge submit -e CELLFORGE_RUNS=...``), or set where
   ``cellforge submit`` runs, or in the cluster's own environment: an absolute path (a shared
   mount, or a directory on the head node), ``~/...``, ``file:///...``, or a pyarrow filesystem URI
   (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``; staged on the head node, copied there
   when the job ends);
2. else ``~/cellforge/runs`` on the head node (where a Ray job's entrypoint runs).

Relative paths in a job file are read as paths in the project, whose ``runs/`` directory stands
for the durable root: ``bundle: ../runs/quickstart/bundle`` in ``jobs/quickstart.yaml`` lands at
``<root>/quickstart/bundle`` — where ``fit`` puts a run named ``quickstart`` by default — and an
output elsewhere in the project (``out: exports/digits.onnx``) at ``<root>/exports/digits.onnx``.
Inputs (data files, a bundle to evaluate) are read from the durable root when they are there or an
earlier step writes them there, else from the job's copy of the project. ``cellforge run`` on this
machine is unchanged: paths are relative to the job file.

    >>> root = Root.parse("/shared/runs")
    >>> root.path, root.uri
    (PosixPath('/shared/runs'), None)
    >>> paths = JobPaths(root, project=Path("/tmp/wd"))
    >>> paths.output("../runs/quickstart/bundle", base=Path("/tmp/wd/jobs"))
    PosixPath('/shared/runs/quickstart/bundle')
    >>> paths.output("exports/digits.onnx", base=Path("/tmp/wd"))
    PosixPath('/shared/runs/exports/digits.onnx')
    >>> Root.parse("runs")
    Traceback (most recent call last):
    ...
    cellforge.errors.SpecError: invalid submitted job's storage (1 problem):
      - CELLFORGE_RUNS: a submitted job's runs directory must be an absolute path (a shared mount or a directory on the head node), ~/..., file:///... or a filesystem URI such as s3://bucket/prefix; got 'runs' (relative to the job's temporary working directory, which Ray deletes with the session)

The job keeps a record, ``<root>/jobs/<submission id>.json`` (its status, durable root and each
step's bundle), written as it starts and again when it ends, and prints it as the last line of its
logs; ``cellforge jobs status ID`` reads it back (see ``cellforge.submit``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellforge.errors import SpecError
from cellforge.log import log

SETTING = "CELLFORGE_RUNS"
SUBMISSION = "CELLFORGE_SUBMISSION_ID"  # set by ``cellforge submit``: this process is a submitted job
DEFAULT = "~/cellforge/runs"  # on the head node, when nothing is configured
STAGING = "~/cellforge/staging"  # a URI root's local copy on the head node, per job
RECORD_LINE = "cellforge job record: "  # the record's line in the job's logs
# the schemes pyarrow.fs.FileSystem.from_uri knows (pyarrow 15+): checked here without building the
# filesystem, which for s3 resolves the bucket's region over the network
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
ACCEPTED = ("an absolute path (a shared mount or a directory on the head node), ~/..., file:///... or a "
            "filesystem URI such as s3://bucket/prefix")


def _problem(value: str, why: str) -> SpecError:
    return SpecError([(SETTING, f"a submitted job's runs directory must be {ACCEPTED}; got {value!r} ({why})")],
                     what="submitted job's storage")


@dataclass(frozen=True)
class Root:
    """A durable root: a local (or mounted) directory ``path``, or a remote ``uri`` (then ``path`` is None)."""

    path: Path | None
    uri: str | None = None

    @classmethod
    def parse(cls, value: str, expand_home: bool = True) -> Root:
        """``CELLFORGE_RUNS`` as a submitted job reads it. ``expand_home=False`` keeps ``~`` (a path
        on the cluster, read where the job runs)."""
        value = value.strip()
        if not value:
            raise _problem(value, "empty")
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", value)
        if m:
            scheme, rest = m.group(1).lower(), m.group(2)
            if scheme == "file":
                if not rest.startswith("/"):
                    raise _problem(value, "a file:// URI needs an absolute path: file:///shared/runs")
                return cls(Path(os.path.normpath(rest)))
            if scheme not in SCHEMES:
                raise _problem(value, f"unknown scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")
            if not rest.strip("/"):
                raise _problem(value, "no bucket or path after the scheme")
            return cls(None, f"{scheme}://{rest.rstrip('/')}")
        if value.startswith("~"):
            return cls(Path(value).expanduser() if expand_home else Path(value))
        if not os.path.isabs(value):
            raise _problem(value, "relative to the job's temporary working directory, which Ray deletes with "
                                  "the session")
        return cls(Path(os.path.normpath(value)))

    def __str__(self) -> str:
        return self.uri or str(self.path)

    def join(self, rel: str | Path) -> str:
        """``rel`` under this root, as the user will look for it (a path or a URI)."""
        rel = Path(rel).as_posix().strip("/")
        if self.uri:
            return f"{self.uri}/{rel}" if rel and rel != "." else self.uri
        return str(self.path / rel) if rel and rel != "." else str(self.path)


def announced(env: dict[str, str] | None = None) -> str:
    """Where ``cellforge submit`` says a job's runs will go, before it starts: ``CELLFORGE_RUNS`` from
    ``-e`` or this environment (checked), else the head node's default."""
    value = (env or {}).get(SETTING) or os.environ.get(SETTING)
    if value:
        return str(Root.parse(value, expand_home=False))
    return f"{DEFAULT} on the head node (unless the cluster sets ${SETTING})"


def job_root() -> Root:
    """The durable root, as the submitted job itself resolves it (on the head node)."""
    return Root.parse(os.environ.get(SETTING) or DEFAULT)


@dataclass
class JobPaths:
    """Maps a job file's relative paths into the durable root, for a job running in ``project`` (Ray's
    temporary copy of the project). ``local`` is where files are written on this node: the root itself,
    or a URI root's staging directory (copied to the URI when the job ends)."""

    root: Root
    project: Path
    local: Path | None = None
    written: set[Path] = field(default_factory=set)  # outputs of the steps so far (local paths)

    def __post_init__(self):
        self.project = Path(os.path.normpath(self.project))
        if self.local is None:
            self.local = self.root.path

    def relative(self, value: str, base: Path) -> Path:
        """The path's place in the project, with ``runs/`` (the project's runs directory) taken off."""
        full = Path(os.path.normpath(base / value))
        try:
            rel = full.relative_to(self.project)
        except ValueError:
            raise SpecError([("", f"{value!r} leaves the project directory: in a submitted job, a relative "
                                  "output path is placed under the durable runs directory by its place in the "
                                  "project; use a path inside the project or an absolute one")],
                            what="job file") from None
        return Path(*rel.parts[1:]) if rel.parts[:1] == ("runs",) else rel

    def output(self, value: str, base: Path) -> Path:
        """Where an output path of the job file is written (an absolute path stays as given)."""
        if Path(value).is_absolute():
            return Path(value)
        return self.local / self.relative(value, base)

    def shown(self, local: str | Path) -> str:
        """A written path as it lives durably (its URI for a URI root)."""
        p = Path(local)
        if self.root.uri and self.local is not None:
            try:
                return self.root.join(p.relative_to(self.local))
            except ValueError:
                return str(p)
        return str(p)

    def input(self, value: str, base: Path) -> str:
        """An input path: in the durable root when it is there or an earlier step wrote it there, else
        the job's copy of the project (data files and keys travel with it)."""
        if Path(value).is_absolute():
            return value
        try:
            durable = self.output(value, base)
        except SpecError:
            return value
        if durable in self.written or durable.exists():
            return str(durable)
        return value

    def rewrite(self, step, body: dict[str, Any], base: Path, where: str = "",
                problems: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        """A step's body with its output paths (``step.writes``) and inputs mapped (``${refs}`` and URIs
        untouched); a path that cannot be placed is a problem at its field's path."""
        from cellforge.jobs.steps import has_ref

        body = json.loads(json.dumps(body, default=str))  # a deep copy
        reads = (*step.files, *(("bundle",) if step.reads_bundle else ()))
        for fields, how in ((reads, "input"), (step.writes, "output")):
            for dotted in fields:
                *parents, last = dotted.split(".")
                holder: Any = body
                for key in parents:
                    holder = holder.get(key) if isinstance(holder, dict) else None
                value = holder.get(last) if isinstance(holder, dict) else None
                if not isinstance(value, str) or has_ref(value) or "://" in value:
                    continue
                if how == "input":
                    holder[last] = self.input(value, base)
                    continue
                try:
                    holder[last] = str(self.output(value, base))
                except SpecError as e:
                    if problems is not None:
                        problems += [(f"{where}.{dotted}", m) for _, m in e.problems]
                    continue
                self.written.add(Path(holder[last]))
        return body


# ------------------------------------------------------------------ the submitted job's side
class Submitted:
    """This process as a submitted job's entrypoint: its durable root set up, its record kept.

        job = Submitted.current()               # None outside a submitted job
        with job:                               # the record: RUNNING, then SUCCEEDED or FAILED
            run_job(path, paths=job.paths, outputs=job.outputs)
    """

    def __init__(self, submission_id: str, root: Root, project: Path):
        self.id = submission_id
        self.root = root
        local = root.path if root.uri is None else Path(STAGING).expanduser() / _safe(submission_id)
        self.paths = JobPaths(root, project, local)
        self.outputs: dict[str, dict[str, Any]] = {}
        self.failed = False  # set by an entrypoint that fails without raising (a notebook's failed cell)
        self.started = time.time()

    @classmethod
    def current(cls) -> Submitted | None:
        sid = os.environ.get(SUBMISSION)
        return cls(sid, job_root(), Path.cwd()) if sid else None

    def __enter__(self) -> Submitted:
        self.paths.local.mkdir(parents=True, exist_ok=True)
        # fit, sweep, tracking and the registry all read their default runs directory from here
        os.environ[SETTING] = str(self.paths.local)
        log.info("runs, bundles and tracking data of this job: %s", self.root)
        self.write("RUNNING")
        return self

    def __exit__(self, kind, exc, tb) -> None:
        status = "SUCCEEDED" if kind is None and not self.failed else "FAILED"
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        if self.root.uri:
            db = self.paths.local / "mlflow.db"  # one per job: copied beside its record, never over another's
            if db.is_file():
                (self.paths.local / "jobs").mkdir(exist_ok=True)
                db.replace(self.paths.local / "jobs" / f"{_safe(self.id)}.mlflow.db")
            try:
                upload(self.paths.local, self.root.uri)
            except Exception as e:  # noqa: BLE001 - reported in the record; the staged copy is kept
                status, error = "FAILED", f"copying {self.paths.local} to {self.root.uri} failed: {e}"
                log.error("%s", error)
        self.write(status, error)
        if self.root.uri and status == "SUCCEEDED":
            shutil.rmtree(self.paths.local, ignore_errors=True)  # copied: the staging copy goes

    def record(self, status: str, error: str | None = None) -> dict[str, Any]:
        return {"submission_id": self.id, "status": status, "root": str(self.root), "host": platform.node(),
                "started": self.started, "ended": None if status == "RUNNING" else time.time(),
                "bundles": bundles_of(self.outputs, self.paths), "tracked": tracked_of(self.outputs),
                "tracking_uri": self.tracking_uri(), "error": error,
                "outputs": json.loads(json.dumps(self.outputs, default=str))}

    def tracking_uri(self) -> str | None:
        """The job's tracking store: the configured one, else the default SQLite store in the root (for a
        URI root, its copy beside the record; see __exit__)."""
        from cellforge import tracking

        uri = tracking.resolve(None, self.paths.local)
        if self.root.uri and uri == f"sqlite:///{self.paths.local}/mlflow.db":
            return self.root.join(f"jobs/{_safe(self.id)}.mlflow.db")
        return uri

    def write(self, status: str, error: str | None = None) -> None:
        rec = self.record(status, error)
        path = self.paths.local / "jobs" / f"{_safe(self.id)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(path)  # a reader never sees half a record
        if self.root.uri and status != "RUNNING":
            try:
                upload(path.parent, f"{self.root.uri}/jobs")
            except Exception as e:  # noqa: BLE001 - the logs still hold the record
                log.error("copying the job's record to %s failed: %s", self.root.uri, e)
        # the logs hold it too (the last such line counts): a client that cannot see the durable root
        # reads it there. Outside run_job, so at the logger's own level, not the job file's log_level
        log.info("%s%s", RECORD_LINE, json.dumps(rec, default=str))


def bundles_of(outputs: dict[str, dict[str, Any]], paths: JobPaths | None = None) -> dict[str, str]:
    """Each step's bundle (``{step id: location}``), as the durable location."""
    out = {}
    for sid, o in outputs.items():
        if isinstance(o, dict) and isinstance(o.get("bundle"), str):
            out[sid] = paths.shown(o["bundle"]) if paths else o["bundle"]
    return out


def tracked_of(outputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each step's bundle as its tracking run's artifact (``runs:/RUN/bundle``), where the fit was
    tracked: with a tracking server configured, the server's artifact store holds a copy too."""
    out = {}
    for sid, o in outputs.items():
        manifest = Path(o.get("bundle", "")) / "manifest.json" if isinstance(o, dict) else None
        if manifest is None or not isinstance(o.get("bundle"), str) or not manifest.is_file():
            continue
        run_id = (json.loads(manifest.read_text()).get("provenance") or {}).get("run_id")
        if run_id:
            out[sid] = f"runs:/{run_id}/bundle"
    return out


def upload(local: Path, uri: str) -> None:
    """Copy a directory tree to a filesystem URI (pyarrow's filesystems: s3, gs, hdfs, ...)."""
    import pyarrow.fs as pafs

    fs, prefix = pafs.FileSystem.from_uri(uri)
    fs.create_dir(prefix, recursive=True)
    pafs.copy_files(str(local), prefix, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    log.info("copied %s to %s", local, uri)


def read_record(root: str, submission_id: str) -> dict[str, Any] | None:
    """A job's record from its durable root, when this machine can read it (a local or mounted path, or a
    URI with credentials here); None otherwise."""
    try:
        r = Root.parse(root, expand_home=True)
    except SpecError:
        return None
    name = f"jobs/{_safe(submission_id)}.json"
    try:
        if r.uri is None:
            p = r.path / name
            return json.loads(p.read_text()) if p.is_file() else None
        import pyarrow.fs as pafs

        fs, prefix = pafs.FileSystem.from_uri(r.join(name))
        with fs.open_input_stream(prefix) as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - unreadable from here: the caller falls back to the job's logs
        return None


def record_from_logs(logs: str) -> dict[str, Any] | None:
    """The last record line a job printed (see ``Submitted.write``)."""
    for line in reversed(logs.splitlines()):
        at = line.find(RECORD_LINE)
        if at >= 0:
            try:
                return json.loads(line[at + len(RECORD_LINE):])
            except json.JSONDecodeError:
                return None
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


__all__ = ["Root", "JobPaths", "Submitted", "announced", "job_root", "bundles_of", "read_record",
           "record_from_logs", "upload", "SETTING", "SUBMISSION", "RECORD_LINE"]
