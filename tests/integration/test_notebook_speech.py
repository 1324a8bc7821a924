"""notebooks/08_speech.ipynb runs top to bottom (papermill, as test_notebooks.py runs the others): it
trains a CTC transcriber of spoken digit strings on the synthesised corpus, plots a spectrogram, the
learning curves and one clip's CTC posteriors, transcribes held-out voices, serves the model and
transcribes over HTTP, then deletes the app. Checked from its outputs: the error rates it printed,
that the endpoint answered what the bundle does, and that the app is gone."""

import re
import uuid

import nbformat
import papermill
import pytest
import test_notebooks
from _ray_cluster import free_port

NOTEBOOK = test_notebooks.NOTEBOOKS / "08_speech.ipynb"
kernel_env = test_notebooks.kernel_env  # a fixture: kernels join this session's Ray
# the notebook's defaults: test_speech.py's corpus (built once, cached), 12 epochs (test_speech: 24; 60 s of
# training at load 2.6). Measured: test CER 0.0256, WER 0.0267 on 200 clips of 5 held-out voices; the
# bars are the for spoken digit strings
CER_BAR, WER_BAR = 0.05, 0.10


def test_speech_notebook_is_committed_clean_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert not any(c.outputs or c.execution_count for c in nb.cells if c.cell_type == "code")
    assert set(papermill.inspect_notebook(str(NOTEBOOK))) >= {"voices", "per_voice", "epochs", "name", "port"}


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_speech_notebook(kernel_env, tmp_path):
    name = f"nb-speech-{uuid.uuid4().hex[:6]}"
    nb = test_notebooks.execute("08_speech.ipynb", tmp_path, name=name, port=free_port())
    out = test_notebooks.texts(nb)
    assert test_notebooks.images(nb) == 3  # the spectrogram, the learning curves, the CTC posteriors
    assert sum("audio/wav" in o.get("data", {}).get("text/html", "") for c in nb.cells
               for o in c.get("outputs", [])) == 1  # the clip, playable
    # the error rates recomputed in the notebook (jiwer, greedy decoding of the loaded bundle) are fit's
    local = re.search(r"local CER ([\d.]+), WER ([\d.]+) on (\d+) clips \(fit's test metrics: CER ([\d.]+), "
                      r"WER ([\d.]+)\)", out)
    assert local, out[-3000:]
    cer, wer, n, fit_cer, fit_wer = map(float, local.groups())
    assert n >= 100 and (cer, wer) == (fit_cer, fit_wer)
    assert cer <= CER_BAR and wer <= WER_BAR, (cer, wer)
    # one frame per CTC spike, each at a time and a probability, words from the vocabulary
    spikes = re.findall(r"^  (zero|one|two|three|four|five|six|seven|eight|nine) +at [\d.]+ s \(frame \d+, p=",
                        out, re.M)
    assert 2 <= len(spikes) <= 5
    assert "endpoint transcripts == model.predict: True" in out  # {"wav"} and sample arrays over HTTP
    assert repr(name) in re.search(r"^served: (\[.*\])", out, re.M).group(1)
    assert repr(name) not in re.search(r"^still served: (\[.*\])", out, re.M).group(1)  # it deleted its app
