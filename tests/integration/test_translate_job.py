"""jobs/translate.yaml (train -> evaluate -> deploy) on the session's Ray and Serve.

In ``make test`` its evaluate and deploy steps run as written on the session's numbers translator
(tests/integration/_seq2seq_runs.py; the train step is that run): evaluate re-creates the bundle's
held-out split and scores what ``fit`` scored, and the deployed endpoint answers what the bundle
does. The whole job, train step included, runs (small) in ``make test-all``.
"""

from __future__ import annotations

from pathlib import Path

import _seq2seq_runs
import pytest
import yaml

import cellforge as cf
from cellforge.jobs import run_job
from cellforge.serving.deploy import base_url

numbers_runs = _seq2seq_runs.numbers_runs  # a session fixture, shared by the seq2seq test modules
JOB = Path(__file__).resolve().parents[2] / "jobs" / "translate.yaml"
TEXTS = ["four thousand and twelve", "thirteen"]


def job_file() -> dict:
    job = yaml.safe_load(JOB.read_text())
    assert [next(iter(s)) for s in job["steps"]] == ["train", "evaluate", "deploy"]
    return job


def test_evaluate_and_deploy_steps_score_and_serve_the_bundle(serve_module, numbers_runs):
    result = numbers_runs("torch")  # 1,000 numbers: the job's data, smaller
    job = job_file()
    train, evaluate, deploy = (next(iter(s.values())) for s in job["steps"])
    evaluate["data"]["args"]["high"] = 1000
    deploy.update(name="translate-job", block=False, port=int(base_url().rsplit(":", 1)[1]))
    job["steps"] = [{"evaluate": {**evaluate, "bundle": str(result.bundle)}},
                    {"deploy": {**deploy, "bundle": str(result.bundle)}}]
    out = run_job(job, base=JOB.parent)
    scored = out["evaluate"]["metrics"]
    for key in ("loss", "token_accuracy", "exact_match", "bleu", "chrf", "rouge_l"):
        assert scored[f"test_{key}"] == pytest.approx(result.metrics[f"test_{key}"], abs=1e-6), key
    client = cf.Client(base_url())
    assert client.predict("translate-job", TEXTS)["texts"] == cf.load(result.bundle).predict(TEXTS)
    assert out["deploy"]["url"].endswith("/v1/models/translate-job")


@pytest.mark.slow
def test_the_whole_job_runs(serve_module, tmp_path):
    """Every step as written, on less data and fewer epochs (the quality bar is test_seq2seq.py's)."""
    job = job_file()
    train, evaluate, deploy = (next(iter(s.values())) for s in job["steps"])
    for step in (train, evaluate):
        step["data"]["args"]["high"] = 300
    train.update(epochs=2, bundle=str(tmp_path / "bundle"))
    train["spec"]["hidden_size"] = 32
    deploy.update(name="translate-whole", block=False, port=int(base_url().rsplit(":", 1)[1]))
    out = run_job(job, base=JOB.parent)
    assert set(out["evaluate"]["metrics"]) >= {"test_exact_match", "test_bleu", "test_chrf", "test_rouge_l"}
    texts = cf.Client(base_url()).predict("translate-whole", TEXTS)["texts"]
    assert texts == cf.load(out["numbers"]["bundle"]).predict(TEXTS)
