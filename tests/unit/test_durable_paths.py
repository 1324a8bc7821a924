"""Where a submitted job's outputs land (cellforge.jobs.durable): the durable root read from
CELLFORGE_RUNS (bad values refused naming the setting), a job file's relative paths mapped into it
(the project's runs/ standing for the root), inputs read from it when they are there, the job's
record written, copied to a URI root and read back; `cellforge run` keeps relative paths as before."""

import json
import shutil
from pathlib import Path

import pytest

from cellforge.errors import SpecError
from cellforge.jobs import parse_job
from cellforge.jobs.durable import (
    SETTING,
    SUBMISSION,
    JobPaths,
    Root,
    Submitted,
    announced,
    read_record,
    record_from_logs,
)
from cellforge.submit import job_env, submit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value, path, uri", [
    ("/shared/runs", "/shared/runs", None),
    ("/shared/runs/../runs/", "/shared/runs", None),
    ("file:///mnt/team/runs", "/mnt/team/runs", None),
    ("s3://bucket/team/runs/", None, "s3://bucket/team/runs"),
    ("gs://bucket/runs", None, "gs://bucket/runs"),
])
def test_accepted_roots(value, path, uri):
    root = Root.parse(value)
    assert (str(root.path) if root.path else None, root.uri) == (path, uri)


def test_home_is_expanded_where_the_job_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Root.parse("~/runs").path == tmp_path / "runs"
    assert str(Root.parse("~/runs", expand_home=False)) == "~/runs"  # as announced by the submitting side


@pytest.mark.parametrize("value, why", [
    ("runs", "relative to the job's temporary working directory"),
    ("./out", "relative to the job's temporary working directory"),
    ("  ", "empty"),
    ("ftp://host/runs", "unknown scheme 'ftp'; known schemes: file, s3"),
    ("file://runs", "a file:// URI needs an absolute path"),
    ("s3://", "no bucket or path"),
])
def test_bad_roots_name_the_setting_and_what_is_accepted(value, why):
    with pytest.raises(SpecError) as e:
        Root.parse(value)
    (field, message), = e.value.problems
    assert field == "CELLFORGE_RUNS"
    assert "an absolute path" in message and "s3://bucket/prefix" in message and why in message


def test_relative_paths_map_into_the_root_by_their_place_in_the_project():
    paths = JobPaths(Root.parse("/durable"), project=Path("/wd"))
    jobs = Path("/wd/jobs")
    assert paths.output("../runs/quickstart/bundle", jobs) == Path("/durable/quickstart/bundle")
    assert paths.output("runs/quickstart/bundle", Path("/wd")) == Path("/durable/quickstart/bundle")
    assert paths.output("out/pred.csv", jobs) == Path("/durable/jobs/out/pred.csv")
    assert paths.output("/abs/bundle", jobs) == Path("/abs/bundle")  # the user's own choice stays
    assert paths.output("../runs", jobs) == Path("/durable")
    with pytest.raises(SpecError, match="leaves the project directory"):
        paths.output("../../elsewhere/bundle", jobs)


def _project(tmp_path: Path) -> Path:
    """A copy of the quickstart job in a project of its own, with a data file and an evaluate step."""
    project = tmp_path / "wd"
    (project / "jobs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (project / "data").mkdir()
    shutil.copy(REPO / "jobs" / "quickstart.yaml", project / "jobs" / "quickstart.yaml")
    with open(project / "jobs" / "quickstart.yaml", "a") as f:
        f.write("  - evaluate: {bundle: ../runs/quickstart/bundle, data: {dataset: digits}}\n"
                "  - predict: {bundle: ../runs/quickstart/bundle, input: ../data/rows.csv, output: ../runs/pred/out.csv}\n")
    (project / "data" / "rows.csv").write_text("a,b\n1,2\n")
    return project


def test_a_submitted_job_writes_into_the_root_and_reads_what_it_wrote(tmp_path):
    project = _project(tmp_path)
    root = tmp_path / "durable"
    paths = JobPaths(Root(root), project=project)
    _, steps, _ = parse_job(project / "jobs" / "quickstart.yaml", paths=paths)
    (_, train), (_, evaluate), (_, predict) = steps
    assert train.bundle == str(root / "quickstart" / "bundle")
    assert evaluate.bundle == str(root / "quickstart" / "bundle")  # written by the train step before it
    assert predict.output == str(root / "pred" / "out.csv")
    assert predict.input == "../data/rows.csv"  # travels with the project: read from the job's copy


def test_an_input_already_in_the_root_is_read_from_there(tmp_path):
    project = _project(tmp_path)
    root = tmp_path / "durable"
    (root / "old" / "bundle").mkdir(parents=True)
    (root / "old" / "bundle" / "manifest.json").write_text("{}")
    job = {"steps": [{"evaluate": {"bundle": "runs/old/bundle", "data": {"dataset": "digits"}}}]}
    with pytest.raises(SpecError, match="no bundle at"):  # locally, nothing there
        parse_job(job, base=project)
    _, [(_, step)], _ = parse_job(job, base=project, paths=JobPaths(Root(root), project=project))
    assert step.bundle == str(root / "old" / "bundle")


def test_an_output_outside_the_project_is_a_problem_at_its_field(tmp_path):
    project = _project(tmp_path)
    job = {"steps": [{"train": {"data": {"dataset": "digits"}, "bundle": "../../x/bundle"}}]}
    with pytest.raises(SpecError) as e:
        parse_job(job, base=project, paths=JobPaths(Root(tmp_path / "durable"), project=project))
    assert [p for p, _ in e.value.problems] == ["steps.0.train.bundle"]


def test_cellforge_run_keeps_paths_relative_to_the_job_file():
    _, [(_, train)], base = parse_job(REPO / "jobs" / "quickstart.yaml")
    assert train.bundle == "../runs/quickstart/bundle" and base == REPO / "jobs"


def test_the_job_record_is_written_and_read_back(tmp_path, monkeypatch, capsys):
    root = tmp_path / "durable"
    monkeypatch.setenv(SUBMISSION, "cellforge-x-1")
    monkeypatch.setenv(SETTING, str(root))
    monkeypatch.chdir(tmp_path)
    job = Submitted.current()
    with job:
        import os

        assert os.environ[SETTING] == str(root)  # fit's default runs directory
        assert json.loads((root / "jobs" / "cellforge-x-1.json").read_text())["status"] == "RUNNING"
        monkeypatch.delenv("CELLFORGE_TRACKING", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        job.outputs["fit"] = {"bundle": str(root / "q" / "bundle"), "metrics": {"test_accuracy": 0.9}}
    record = read_record(str(root), "cellforge-x-1")
    assert record["status"] == "SUCCEEDED" and record["root"] == str(root)
    assert record["bundles"] == {"fit": str(root / "q" / "bundle")}
    assert record["tracked"] == {} and record["tracking_uri"] == f"sqlite:///{root}/mlflow.db"
    assert record_from_logs("noise\n" + capsys.readouterr().out + "more noise\n") == record
    assert read_record(str(tmp_path / "elsewhere"), "cellforge-x-1") is None


def test_a_failed_job_is_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.setenv(SUBMISSION, "j")
    monkeypatch.setenv(SETTING, str(tmp_path))
    with pytest.raises(ValueError), Submitted.current():
        raise ValueError("boom")
    record = read_record(str(tmp_path), "j")
    assert record["status"] == "FAILED" and record["error"] == "ValueError: boom"


def test_a_uri_root_is_staged_then_copied_there(tmp_path, monkeypatch):
    """A pyarrow filesystem URI (file:// here: the same code path as s3:// without a network)."""
    dest = tmp_path / "bucket"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for k in ("CELLFORGE_TRACKING", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    job = Submitted("sid-1", Root(None, dest.as_uri()), project=tmp_path)
    with job:
        staged = job.paths.output("runs/q/bundle", tmp_path)
        assert staged == tmp_path / "home" / "cellforge" / "staging" / "sid-1" / "q" / "bundle"
        staged.mkdir(parents=True)
        (staged / "manifest.json").write_text('{"provenance": {"run_id": "abc"}}')
        (job.paths.local / "mlflow.db").write_text("db")
        job.outputs["fit"] = {"bundle": str(staged)}
    assert json.loads((dest / "q" / "bundle" / "manifest.json").read_text())["provenance"]["run_id"] == "abc"
    assert (dest / "jobs" / "sid-1.mlflow.db").read_text() == "db"  # one per job, never over another's
    assert not job.paths.local.exists()  # the staging copy goes once copied
    record = read_record(dest.as_uri(), "sid-1")
    assert record["bundles"] == {"fit": f"{dest.as_uri()}/q/bundle"}
    assert record["tracked"] == {"fit": "runs:/abc/bundle"}  # read from the bundle's provenance
    assert record["tracking_uri"] == f"{dest.as_uri()}/jobs/sid-1.mlflow.db"


def test_submit_passes_the_configured_storage_and_refuses_a_bad_one(monkeypatch, tmp_path):
    monkeypatch.delenv(SETTING, raising=False)
    env = job_env({"A": "1"}, "sid")
    assert env == {"A": "1", SUBMISSION: "sid"}
    assert announced(env).startswith("~/cellforge/runs on the head node")
    monkeypatch.setenv(SETTING, "/team/runs")  # this shell's setting travels with the job
    assert job_env({}, "sid")[SETTING] == "/team/runs" and announced(job_env({}, "sid")) == "/team/runs"
    assert job_env({SETTING: "s3://b/r"}, "sid")[SETTING] == "s3://b/r"  # -e wins
    job = tmp_path / "job.yaml"
    job.write_text("steps: [{train: {data: {dataset: digits}}}]\n")
    with pytest.raises(SpecError) as e:  # refused before any cluster is contacted (none is there)
        submit(job, "http://127.0.0.1:9", env={SETTING: "runs"})
    assert e.value.problems[0][0] == "CELLFORGE_RUNS"
