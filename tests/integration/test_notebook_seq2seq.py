"""notebooks/06_seq2seq.ipynb runs top to bottom with small parameters (papermill, as
test_notebooks.py runs the others): trains a translator, plots its learning curves and an attention
heatmap, sweeps two attention types, deploys it and calls it (Python client, stream, curl)."""

import uuid

import nbformat
import papermill
import pytest
import test_notebooks
from _ray_cluster import free_port

NOTEBOOK = test_notebooks.NOTEBOOKS / "06_seq2seq.ipynb"
kernel_env = test_notebooks.kernel_env  # a fixture: kernels join this session's Ray


def test_seq2seq_notebook_is_committed_clean_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert not any(c.outputs or c.execution_count for c in nb.cells if c.cell_type == "code")
    assert set(papermill.inspect_notebook(str(NOTEBOOK))) >= {"numbers", "epochs", "attention_types", "port"}


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_seq2seq_notebook(kernel_env, tmp_path):
    name = f"nb-s2s-{uuid.uuid4().hex[:6]}"
    nb = test_notebooks.execute("06_seq2seq.ipynb", tmp_path, numbers=300, epochs=2, hidden=16, workers=1,
                                attention_types=["none", "dot"], sweep_epochs=1, name=name, port=free_port())
    out = test_notebooks.texts(nb)
    assert test_notebooks.images(nb) == 2  # the learning curves, the attention heatmap
    assert "test_bleu" in out and "(output tokens x input tokens)" in out
    board = next(c for c in nb.cells if c.cell_type == "code" and c.source.endswith("sweep.leaderboard()"))
    board = board.outputs[0]["data"]["text/plain"]
    assert "none" in board and "dot" in board and "val_chrf" in board  # a trial per attention type
    assert '"texts"' in out  # curl's answer
    assert "'done': True" in out  # the stream's last event
