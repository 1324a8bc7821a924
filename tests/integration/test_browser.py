"""The notebooks in a real browser: Playwright drives Debian's Chromium (Playwright's own browser
download is not reachable here; ``make chromium`` installs it) against a JupyterLab this test starts
on 127.0.0.1 with a token. Each notebook is opened in the UI, its parameters cell set small, Run All;
then, from the rendered page: every cell ran, no output holds a traceback or a Ray/TensorFlow internal
line, every figure is an image of a sensible size, and the sweep's live table changed while it ran.
Then 01, 02 and 03 run in three kernels at once: one Ray (this session's local Ray, which the kernels
find through CELLFORGE_HOME), one Serve, no error output, every kernel stopped afterwards.

Screenshots of the last run are kept in tests/artifacts/browser/ (gitignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from _ray_cluster import free_port

from cellforge import local_ray

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
# slow (make test-all): over 13 minutes of notebooks on 2 cores
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: make chromium")]

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = REPO / "tests" / "artifacts" / "browser"
# what no output area may show: a traceback, or Ray's/TensorFlow's own lines
INTERNAL = ["Traceback", "Error:", "core_worker", "raylet", "(RayTrainWorker pid", "(pid=", "WARNING",
            "I0000", "E0000", "W0000", "oneDNN", "cuInit", "SIGTERM", "GetTimeoutError", "multiple active Ray"]
FIGURES = {"01_quickstart.ipynb": 3, "02_sweep.ipynb": 1, "03_deploy_and_call.ipynb": 1}


def params(serve_port: int) -> dict[str, str]:
    run = uuid.uuid4().hex[:6]
    return {"01_quickstart.ipynb": "epochs, hidden, cell, workers, address = 2, 16, 'lstm', 1, None",
            "02_sweep.ipynb": f"trials, epochs, hidden_sizes, workers_per_trial = 2, 2, [16], 1\n"
                              f"name, address = 'browser-{run}', None",
            "03_deploy_and_call.ipynb": f"bundle, epochs, hidden, name = None, 2, 16, 'b{run}'\n"
                                        f"port, address = {serve_port}, None"}


@pytest.fixture
def lab(ray_session, runs, tmp_path):
    """JupyterLab on 127.0.0.1 with a token; its kernels join this session's local Ray."""
    root = tmp_path / "lab"
    shutil.copytree(REPO / "notebooks", root)
    # every cell in the page (JupyterLab may otherwise leave cells out of view out of the DOM), and the
    # user's own settings and workspaces left alone
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the local Ray, through CELLFORGE_HOME
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--allow-root",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
                             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
        yield base, token, tmp_path / "lab.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        lab_log = (tmp_path / "lab.log").read_text(errors="replace")
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        (ARTEFACTS / "lab.log").write_text(lab_log)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def open_notebook(page, base: str, token: str, name: str) -> None:
    """Open ``name`` in a workspace of its own (tabs of one JupyterLab do not rearrange each other)."""
    page.goto(f"{base}/lab/workspaces/w{uuid.uuid4().hex[:8]}/tree/{name}?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell .cm-content", timeout=120_000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=180_000)  # the status bar: kernel ready


def set_parameters(page, text: str) -> None:
    """Replace the parameters cell's code, typing into its editor as a user does."""
    cell = page.locator(".jp-NotebookPanel:visible .jp-CodeCell").first
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)
    page.keyboard.press("Escape")


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def prompts(page) -> list[str]:
    return page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt").all_inner_texts()


def wait_done(page, timeout: float, watch=None) -> None:
    """Until every code cell has run ('[n]:'); ``watch()`` is called meanwhile (the sweep's table)."""
    deadline = time.time() + timeout
    while True:
        if watch:
            watch()
        p = prompts(page)
        if p and all(x.strip().strip("[]:").isdigit() for x in p):
            return
        assert time.time() < deadline, f"cells did not finish: {p}"
        time.sleep(0.5)


def check_outputs(page, name: str) -> None:
    outputs = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output")
    errors = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output[data-mime-type*='error']").count()
    assert errors == 0, f"{name}: an error output"
    texts = outputs.all_inner_texts()
    bad = [(word, t[:500]) for t in texts for word in INTERNAL if word in t]
    assert not bad, f"{name}: {bad}"
    images = page.locator(".jp-NotebookPanel:visible .jp-RenderedImage img")
    sizes = images.evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight, i.width, i.height])")
    assert len(sizes) == FIGURES[name], f"{name}: {len(sizes)} figures: {sizes}"
    for nw, nh, w, h in sizes:  # drawn, and not wider than a notebook column at the inline backend's dpi
        assert 300 <= nw <= 1000 and 60 <= nh <= 800 and w >= 300, f"{name}: a figure of {nw}x{nh} shown {w}x{h}"


def shot(page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def serve_controllers(ray) -> int:
    return sum("SERVE_CONTROLLER" in a["name"] for a in ray.util.list_named_actors(all_namespaces=True))


def test_each_notebook_runs_in_the_browser_then_three_at_once(ray_session, lab, browser):
    base, token, lab_log = lab
    ray = ray_session
    owner = local_ray.state()["pid"]
    serve_port = free_port()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    for name, text in params(serve_port).items():
        open_notebook(page, base, token, name)
        set_parameters(page, text)
        run_all(page)
        tables: list[str] = []

        def watch(tables=tables):
            t = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output", has_text="sweep browser-")
            if t.count():
                html = t.first.inner_html()
                if not tables or tables[-1] != html:
                    tables.append(html)

        wait_done(page, 900, watch if name.startswith("02") else None)
        shot(page, name.removesuffix(".ipynb"))
        check_outputs(page, name)
        if name.startswith("02"):
            assert len(tables) >= 3, f"the sweep's table changed {len(tables) - 1} times: {tables}"
        page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Shut Down All Kernels").first.click()
        page.locator(".jp-Dialog-button.jp-mod-accept, .jp-Dialog-button.jp-mod-warn").first.click()

    # 01, 02 and 03 in three kernels at once (three tabs of one JupyterLab)
    pages = {}
    for name, text in params(serve_port).items():
        pg = context.new_page()
        open_notebook(pg, base, token, name)
        set_parameters(pg, text)
        run_all(pg)
        pages[name] = pg
    for name, pg in pages.items():
        wait_done(pg, 1200)
        shot(pg, "together-" + name.removesuffix(".ipynb"))
        check_outputs(pg, name)
    assert local_ray.state()["pid"] == owner  # one Ray: the session's, which every kernel joined
    assert sum(n["Alive"] for n in ray.nodes()) == 1
    assert serve_controllers(ray) == 1  # one Serve
    sessions = httpx.get(f"{base}/api/sessions", params={"token": token}).json()
    for s in sessions:
        assert httpx.delete(f"{base}/api/sessions/{s['id']}", params={"token": token}).status_code == 204
    assert httpx.get(f"{base}/api/kernels", params={"token": token}).json() == []
    # a kernel's shutdown printed Ray's fatal-signal stack in the terminal running JupyterLab
    text = lab_log.read_text(errors="replace")
    assert "SIGTERM received" not in text and "epoll_wait" not in text and "***" not in text, text[-3000:]
    context.close()
    from ray import serve

    serve.shutdown()
