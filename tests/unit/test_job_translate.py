"""jobs/translate.yaml validates as a seq2seq train -> evaluate -> deploy pipeline (it runs in
tests/integration/test_translate_job.py)."""

from pathlib import Path

import cellforge as cf
from cellforge.jobs import parse_job

JOB = Path(__file__).resolve().parents[2] / "jobs" / "translate.yaml"


def test_translate_job_validates_as_train_evaluate_deploy():
    job, steps, base = parse_job(JOB)
    assert job.name == "translate" and [k for k, _ in steps] == ["train", "evaluate", "deploy"]
    train = dict(steps)["train"]
    spec = cf.ModelSpec.parse(train.spec)
    assert spec.task == "seq2seq" and spec.attention == "additive" and spec.decode.strategy == "beam"
    assert train.data.dataset == dict(steps)["evaluate"].data.dataset == "numbers"
