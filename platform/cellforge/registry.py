"""The model registry (MLflow's) and the record of runs: which run made a model, and how runs compare.

    cellforge register runs/quickstart/bundle --name digits --alias production
    cellforge deploy models:/digits@production --name digits     # a registry reference, like a bundle path
    cellforge runs list                       # the commands are in cellforge.cli
    cellforge runs compare RUN_ID RUN_ID

    >>> parse_ref("models:/digits@production"), parse_ref("models:/digits/3"), parse_ref("runs/x/bundle")
    (('digits', 'production', None), ('digits', None, '3'), None)

A registered version keeps a copy of the bundle as an artifact of the run that made it (the run id
is in the bundle's manifest, see ``cellforge.tracking.provenance``), so ``runs:/<run>/...`` is its
source; a bundle without a run gets a ``register`` run of its own. Deploying a reference downloads
that version once into ``<runs>/registry/<name>/<version>/bundle`` and verifies it (its signature too,
with a verify key set).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from cellforge import bundle as _bundle
from cellforge import tracking
from cellforge.errors import BundleError, SpecError

REF = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))")


def parse_ref(ref: str | Path) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` reference, else None."""
    m = REF.fullmatch(str(ref))
    return (m["name"], m["alias"], m["version"]) if m else None


def _client(uri: str | None):
    resolved = tracking.resolve(uri)
    if resolved is None:
        raise SpecError([("tracking", "the registry needs MLflow tracking; it is off (tracking: none / "
                                      "CELLFORGE_TRACKING=none)")], what="registry")
    return tracking.Run(resolved, None).client()


def register(bundle: str | Path, name: str, *, alias: str | None = None, tracking_uri: str | None = None
             ) -> dict[str, Any]:
    """Register a verified bundle as a new version of ``name`` (created if new); ``alias`` (e.g.
    ``production``) then points at it. Returns name, version, run_id and source."""
    path = Path(bundle)
    manifest = _bundle.verify(path)
    c = _client(tracking_uri)
    run_id = (manifest.get("provenance") or {}).get("run_id")
    if run_id is None or not _exists(c, run_id):
        run = tracking.start(tracking_uri, _runs_dir(), run_name=f"register-{name}", params={},
                             tags={"cellforge.kind": "register", "cellforge.bundle": str(path.resolve())})
        if run.run_id is None:
            raise SpecError([("tracking", "cannot open a run to hold the bundle (see the warning above)")],
                            what="registry")
        run_id = run.run_id
        c.set_terminated(run_id)
    artifact = f"registered/{_bundle.digest(path)[:12]}"  # the exact bundle, signature included
    c.log_artifacts(run_id, str(path), artifact)
    try:
        c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises RESOURCE_DOES_NOT_EXIST
        c.create_registered_model(name)
    mv = c.create_model_version(name, f"runs:/{run_id}/{artifact}", run_id=run_id,
                                tags={"cellforge.digest": _bundle.digest(path)})
    if alias:
        c.set_registered_model_alias(name, alias, mv.version)
    return {"name": name, "version": str(mv.version), "run_id": run_id, "source": mv.source, "alias": alias}


def set_alias(name: str, alias: str, version: str | int, *, tracking_uri: str | None = None) -> None:
    """Point ``alias`` at ``version`` of ``name`` (deploying ``models:/name@alias`` again switches to it)."""
    _client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def _exists(c, run_id: str) -> bool:
    try:
        c.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - not in this store (a bundle from another team's server)
        return False


def fetch(ref: str, *, tracking_uri: str | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Resolve a registry reference to a verified local bundle: {path, name, version, run_id, source}."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise SpecError([("bundle", f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {ref!r}")],
                        what="registry")
    name, alias, version = parsed
    c = _client(tracking_uri)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except Exception as e:  # noqa: BLE001
        raise SpecError([("bundle", f"{ref}: no such registered model version ({str(e).splitlines()[0]})")],
                        what="registry") from None
    m = re.fullmatch(r"runs:/([^/]+)/(.+)", mv.source or "")
    if m is None:
        raise SpecError([("bundle", f"{ref}: version {mv.version} has source {mv.source!r}, not a cellforge "
                                    "bundle registered with `cellforge register`")], what="registry")
    dest = (cache or _runs_dir() / "registry") / name / str(mv.version)
    path = dest / Path(m[2]).name
    want = (mv.tags or {}).get("cellforge.digest")
    if not (path / "manifest.json").exists() or (want and _bundle.digest(path) != want):  # another store's copy
        shutil.rmtree(path, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        path = Path(c.download_artifacts(m[1], m[2], str(dest)))
    _bundle.verify(path)
    if want and _bundle.digest(path) != want:
        raise BundleError(f"{ref}: the downloaded bundle's manifest is not the one registered as version "
                          f"{mv.version}; refusing to serve it")
    return {"path": path, "name": name, "version": str(mv.version), "run_id": mv.run_id,
            "source": f"models:/{name}/{mv.version}"}


def _runs_dir() -> Path:
    return Path(os.environ.get("CELLFORGE_RUNS", "runs")).resolve()


def runs(kind: str | None = None, *, tracking_uri: str | None = None, max_results: int = 1000):
    """Every tracked run as a pandas DataFrame, newest first: id, name, kind, status, start, the data
    set, test and final-epoch metrics (``metrics.*``) and parameters (``params.*``).

        >>> import cellforge as cf
        >>> cf.runs(kind="fit")[["run_name", "metrics.test_accuracy"]].head()   # doctest: +SKIP
    """
    import pandas as pd

    c = _client(tracking_uri)
    exp = c.get_experiment_by_name(tracking.experiment_name())
    if exp is None:
        return pd.DataFrame()
    query = f"tags.`cellforge.kind` = '{kind}'" if kind else ""
    rows = []
    for r in c.search_runs([exp.experiment_id], query, max_results=max_results, order_by=["start_time DESC"]):
        t = r.data.tags
        rows.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "kind": t.get("cellforge.kind"),
                     "status": r.info.status, "start": pd.Timestamp(r.info.start_time, unit="ms"),
                     "parent": t.get("mlflow.parentRunId"), "data": t.get("cellforge.data"),
                     **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
                     **{f"params.{k}": v for k, v in r.data.params.items()}})
    return pd.DataFrame(rows)


def compare(run_ids: list[str], *, tracking_uri: str | None = None):
    """Runs side by side (one column each): the parameters that differ, then every metric."""
    import pandas as pd

    c = _client(tracking_uri)
    cols = {}
    for rid in run_ids:
        try:
            r = c.get_run(rid)
        except Exception:  # noqa: BLE001
            raise SpecError([("run", f"no run {rid!r} in {tracking.redact(tracking.resolve(tracking_uri))}")],
                            what="runs compare") from None
        cols[f"{r.info.run_name} ({rid[:8]})"] = {**{f"params.{k}": v for k, v in r.data.params.items()},
                                                  **{f"metrics.{k}": v for k, v in r.data.metrics.items()}}
    df = pd.DataFrame(cols)
    params = df[df.index.str.startswith("params.")]
    differ = params[params.astype(str).nunique(axis=1) > 1]
    return pd.concat([differ, df[df.index.str.startswith("metrics.")]])

