"""The numbers translator (English words -> French words) of the seq2seq tests, trained once per test
session and shared by tests/integration/test_seq2seq.py and test_seq2seq_serving.py.

The runs are kept in this module (``RUNS``), not in the fixture: a fixture imported into two test
modules is two fixtures to pytest, each with its own cache, and would train twice.
"""

from __future__ import annotations

import pytest

import cellforge as cf

RUNS: dict[str, cf.FitResult] = {}


def numbers_spec(framework: str, epochs: int = 4, hidden: int = 64, batch_size: int = 16, **training) -> cf.ModelSpec:
    return cf.ModelSpec(task="seq2seq", framework=framework, cell="gru", hidden_size=hidden, attention="additive",
                        input={"type": "text", "tokenizer": "char", "embedding_dim": 32},
                        target={"tokenizer": "char", "max_length": 64, "embedding_dim": 32},
                        decode={"strategy": "beam", "beam_width": 3},
                        training={"epochs": epochs, "batch_size": batch_size, "lr": 3e-3, "clip_norm": 1.0, "seed": 0,
                                  "lr_schedule": "cosine", **training})


@pytest.fixture(scope="session")
def numbers_runs(ray_session, tmp_path_factory):
    """``numbers_runs(framework)``: 1,000 numbers, 4 epochs on 2 workers (a FitResult)."""

    def get(framework: str) -> cf.FitResult:
        if framework not in RUNS:
            spec = numbers_spec(framework, early_stopping={"metric": "val_chrf", "mode": "max", "patience": 10})
            RUNS[framework] = cf.fit(spec, cf.datasets.load("numbers", high=1000), workers=2,
                                     name=f"numbers-{framework}", storage_path=tmp_path_factory.mktemp("numbers"))
        return RUNS[framework]

    return get
