"""The notebooks run top to bottom with small parameters: 02-04 with papermill (notebook 01 and
05 run on a real cluster in test_submit.py), and notebook 01 once more the way a browser runs
it — through a JupyterLab server's REST API and kernel websocket."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import nbformat
import papermill
import pytest
from _ray_cluster import free_port

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture
def kernel_env(ray_session, runs, monkeypatch):
    """Kernels join this test session's Ray (no second Ray on a 2-core machine) and write to ``runs``."""
    monkeypatch.setenv("RAY_ADDRESS", ray_session.get_runtime_context().gcs_address)
    monkeypatch.setenv("CELLFORGE_RUNS", str(runs))
    return runs


def execute(notebook: str, tmp: Path, /, **params) -> nbformat.NotebookNode:
    out = tmp / notebook
    papermill.execute_notebook(str(NOTEBOOKS / notebook), str(out), parameters=params, kernel_name="python3",
                               cwd=str(NOTEBOOKS), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    return nb


def texts(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_committed_notebooks_are_clean_and_parameterised():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_quickstart.ipynb", "02_sweep.ipynb", "03_deploy_and_call.ipynb", "04_custom_cell.ipynb",
                     "05_submit_to_cluster.ipynb", "06_seq2seq.ipynb", "07_anomaly.ipynb", "08_speech.ipynb",
                     "09_interpret.ipynb", "10_tracking.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), f"{name}: commit it with outputs cleared"
        assert papermill.inspect_notebook(str(NOTEBOOKS / name)), f"{name}: no 'parameters' cell"


def leaderboard_text(nb) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "sweep.leaderboard()")
    return cell.outputs[0]["data"]["text/plain"]


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_sweep_notebook_and_its_rerun_resumes(kernel_env, tmp_path):
    """Run All twice with the same name: the second run resumes the finished sweep and shows the same
    leaderboard without training again (no new Train run)."""
    params = dict(trials=2, epochs=2, hidden_sizes=[16], workers_per_trial=1, name=f"nb-sweep-{uuid.uuid4().hex[:6]}")
    nb = execute("02_sweep.ipynb", tmp_path, **params)
    assert images(nb) == 1  # the plot, once
    assert "test_accuracy" in texts(nb)
    train_runs = sorted(p.name for p in (kernel_env / params["name"] / "train").iterdir())
    (tmp_path / "again").mkdir()
    again = execute("02_sweep.ipynb", tmp_path / "again", **params)
    assert "resuming sweep" in texts(again) and images(again) == 1
    assert leaderboard_text(again) == leaderboard_text(nb)
    assert sorted(p.name for p in (kernel_env / params["name"] / "train").iterdir()) == train_runs


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_deploy_and_call_notebook(kernel_env, tmp_path):
    nb = execute("03_deploy_and_call.ipynb", tmp_path, epochs=2, hidden=16, name=f"nb{uuid.uuid4().hex[:6]}",
                 port=free_port())
    out = texts(nb)
    assert '"labels"' in out  # curl's answer
    assert images(nb) == 1  # the streamed forecast
    assert "onnx int8" in out and "ONNX graph: float32" in out  # the runtimes section at the end


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_custom_cell_notebook_in_both_frameworks(kernel_env, tmp_path):
    nb = execute("04_custom_cell.ipynb", tmp_path, epochs=2, hidden=16, workers=1)
    out = texts(nb)
    assert "max |diff| vs numpy" in out and images(nb) == 1


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_anomaly_notebook(kernel_env, tmp_path):
    """Train on normal weeks, detect injected anomalies, then stream weeks through the endpoint one
    request each: the notebook itself asserts that the live scores equal model.score's."""
    nb = execute("07_anomaly.ipynb", tmp_path, epochs=3, hidden=16, stream_weeks=40,
                 name=f"nb-anomaly-{uuid.uuid4().hex[:6]}", port=free_port())
    out = texts(nb)
    assert images(nb) == 2  # the series with its score and flags, and the live scores
    assert "f1" in out and "auroc" in out and "largest difference from model.score" in out


@pytest.mark.slow  # make test-all: a notebook run end to end; make test runs 01 through the Jupyter server and checks every notebook is committed clean
def test_interpret_notebook(kernel_env, tmp_path):
    nb = execute("09_interpret.ipynb", tmp_path, epochs=2, hidden=16, numbers=300, adding_n=600, adding_length=8,
                 name=f"nb-interpret-{uuid.uuid4().hex[:6]}")
    out = texts(nb)
    assert images(nb) == 6  # parity heatmap + states, forecast IG + occlusion, adding heatmap + states
    assert "completeness" in out and "on the marked steps" in out and "mean gate i" in out


# ------------------------------------------------------------------ JupyterLab, as a browser does it
@pytest.fixture
def jupyterlab(tmp_path, kernel_env):
    root = tmp_path / "lab"
    shutil.copytree(NOTEBOOKS, root)
    port, token = free_port(), uuid.uuid4().hex
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--allow-root",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"token {token}"},
                        timeout=30)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
            try:
                if http.get("/api/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/api/status").status_code == 403  # the token is required
        yield http, port, token, root
    finally:
        http.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def run_cell(ws, session: str, code: str, timeout: float = 600) -> list[dict]:
    """Execute one cell over the kernel's websocket (Jupyter messaging protocol); its outputs."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                   "session": session, "version": "5.3", "date": ""},
                        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": True,
                                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
    outputs, idle, reply = [], False, None
    deadline = time.time() + timeout
    while not (idle and reply):
        assert time.time() < deadline, f"cell timed out:\n{code}"
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"output_type": kind, **content})
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
        elif kind == "execute_reply":
            reply = content
    assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}\n{code}"
    return outputs


def test_quickstart_through_the_jupyter_server_kernel_api(jupyterlab):
    import websocket

    http, port, token, root = jupyterlab
    nb = http.get("/api/contents/01_quickstart.ipynb", params={"content": 1}).json()["content"]
    created = http.post("/api/sessions", json={"path": "01_quickstart.ipynb", "type": "notebook",
                                               "name": "01_quickstart.ipynb", "kernel": {"name": "python3"}})
    assert created.status_code == 201, created.text
    kernel = created.json()["kernel"]["id"]
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels?token={token}",
                                     timeout=600)
    session = uuid.uuid4().hex
    try:
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = cell["source"]
            if "parameters" in cell["metadata"].get("tags", []):
                src += "\nepochs, hidden, workers = 2, 16, 1"  # small, as papermill would inject them
            cell["outputs"] = run_cell(ws, session, src)
    finally:
        ws.close()
        assert http.delete(f"/api/sessions/{created.json()['id']}").status_code == 204
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # digits, curves, predictions
    metrics = next(o["data"]["text/plain"] for o in outputs if "test_accuracy" in o.get("data", {}).get(
        "text/plain", ""))
    assert float(re.search(r"'test_accuracy': ([0-9.]+)", metrics).group(1)) > 0.3  # 2 epochs, far above 0.1
    # save the executed notebook through the contents API, as the browser's "save" does
    saved = http.put("/api/contents/executed.ipynb", json={"type": "notebook", "format": "json", "content": nb})
    assert saved.status_code in (200, 201), saved.text
    assert nbformat.read(root / "executed.ipynb", as_version=4).cells
