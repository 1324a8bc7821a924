"""The notebooks in a real browser: Playwright drives Debian's Chromium (Playwright's own browser
download is not reachable here; ``make chromium`` installs it) against a JupyterLab this module starts
on 127.0.0.1 with a token. Each notebook is opened in the UI, its parameters cell set small, Run All;
then, from the rendered page: every cell ran, no output holds a traceback or a Ray/TensorFlow internal
line, every figure is an image of a sensible size, and the sweep's live table changed while it ran.
02 then runs a second time (outputs cleared, Restart Kernel and Run All): it resumes the finished sweep
and shows the same leaderboard without training again. Last, 01, 02 and 03 run in three kernels at once:
one Ray (this session's local Ray, which the kernels find through CELLFORGE_HOME), one Serve, no error
output. Each test shuts its kernels down and checks that JupyterLab's terminal shows no Ray signal stack.

One notebook at a time: ``pytest -m slow tests/integration/test_browser.py -k 02_sweep``.
Screenshots of the last run are kept in tests/artifacts/browser/ (gitignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
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
NOTEBOOKS = list(FIGURES)


def params(serve_port: int, run: str) -> dict[str, str]:
    """Each notebook's parameters cell, small; ``run`` names the sweep (browser-<run>) and the served models."""
    return {"01_quickstart.ipynb": "epochs, hidden, cell, workers, address = 2, 16, 'lstm', 1, None",
            "02_sweep.ipynb": f"trials, epochs, hidden_sizes, workers_per_trial = 2, 2, [16], 1\n"
                              f"name, address = 'browser-{run}', None",
            "03_deploy_and_call.ipynb": f"bundle, epochs, hidden, name = None, 2, 16, 'b{run}'\n"
                                        f"port, address = {serve_port}, None"}


@dataclass
class Lab:
    base: str
    token: str
    log: Path
    runs: Path  # the kernels' CELLFORGE_RUNS: the sweeps' folders
    serve_port: int

    def api(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, f"{self.base}/api/{path}", params={"token": self.token}, timeout=60)


@pytest.fixture(scope="module")
def lab(ray_session, tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token; its kernels join this session's local Ray."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "lab"
    shutil.copytree(REPO / "notebooks", root)
    # every cell in the page (JupyterLab may otherwise leave cells out of view out of the DOM), and the
    # user's own settings and workspaces left alone
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension"  # no 'Jupyter news?' toast over the outputs
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the local Ray, through CELLFORGE_HOME
    env["CELLFORGE_RUNS"] = str(tmp / "runs")
    log_path = tmp / "lab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--allow-root",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             f"--LabApp.user_settings_dir={tmp / 'settings'}",
                             f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, log_path, tmp / "runs", free_port())
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                if lab.api("GET", "status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        (ARTEFACTS / "lab.log").write_text(log_path.read_text(errors="replace"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser, lab, ray_session):
    """A browser context for one test; afterwards its kernels are shut down (through JupyterLab's API, so
    they stop even when the test failed), and JupyterLab's terminal must not show Ray's signal stack."""
    from ray import serve
    from ray.serve.context import _get_global_client

    def apps() -> set[str]:
        return set(serve.status().applications) if _get_global_client(raise_if_no_controller_running=False) else set()

    before = apps()
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield ctx
    finally:
        ctx.close()
        for s in lab.api("GET", "sessions").json():
            assert lab.api("DELETE", f"sessions/{s['id']}").status_code == 204
        for app in apps() - before:  # 03 removes its models itself; a failed run may not have
            serve.delete(app)
    deadline = time.time() + 60
    while lab.api("GET", "kernels").json():
        assert time.time() < deadline, lab.api("GET", "kernels").json()
        time.sleep(0.5)
    time.sleep(2)  # the kernels' last words reach the log
    text = lab.log.read_text(errors="replace")
    assert "SIGTERM received" not in text and "epoll_wait" not in text and "***" not in text, text[-3000:]


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open ``name`` in a workspace of its own (tabs of one JupyterLab do not rearrange each other)."""
    page.goto(f"{lab.base}/lab/workspaces/w{uuid.uuid4().hex[:8]}/tree/{name}?token={lab.token}")
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


def menu(page, top: str, item: str, confirm: bool = False) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()
    if confirm:
        page.locator(".jp-Dialog-button.jp-mod-accept, .jp-Dialog-button.jp-mod-warn").first.click()


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
            if watch:
                watch()
            return
        assert time.time() < deadline, f"cells did not finish: {p}"
        time.sleep(0.5)


def sweep_table(page):
    """Each look at the sweep's live table (its HTML) that differs from the one before."""
    seen: list[str] = []

    def watch():
        t = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output", has_text="sweep browser-")
        if t.count():
            html = t.first.inner_html()
            if not seen or seen[-1] != html:
                seen.append(html)

    return seen, watch


def output_of(page, code: str) -> str:
    """The rendered output of the code cell whose source is ``code``."""
    cell = page.locator(".jp-NotebookPanel:visible .jp-CodeCell").filter(
        has=page.locator(".cm-content", has_text=code))
    return cell.locator(".jp-OutputArea-output").first.inner_text()


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
    """The whole notebook: the notebook scrolls inside its panel, so the window is made as tall as it and the
    panel scrolled to the top first."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    panels = "[...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')]"
    tall = page.evaluate(f"() => Math.max(0, ...{panels}.map(e => e.scrollHeight))")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(size["height"], tall + 150), 16_000)})
    page.evaluate(f"() => {panels}.forEach(e => e.scrollTop = 0)")
    page.wait_for_timeout(500)  # a frame to redraw
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"))
    page.set_viewport_size(size)


def trial_results(exp: Path) -> dict[str, int]:
    """Each trial's result.json (one line per epoch reported) and its size: what training adds to."""
    return {str(p.relative_to(exp)): p.stat().st_size for p in exp.rglob("result.json")}


def one_ray(ray, owner: int) -> None:
    """The kernels joined this session's local Ray: its owner is the same and it is still one node."""
    assert local_ray.state()["pid"] == owner
    assert sum(n["Alive"] for n in ray.nodes()) == 1


@pytest.mark.parametrize("name", NOTEBOOKS, ids=[n.removesuffix(".ipynb") for n in NOTEBOOKS])
def test_notebook_runs_in_the_browser(ray_session, lab, context, name):
    owner = local_ray.state()["pid"]
    run = uuid.uuid4().hex[:6]
    page = context.new_page()
    open_notebook(page, lab, name)
    set_parameters(page, params(lab.serve_port, run)[name])
    menu(page, "Run", "Run All Cells")
    tables, watch = sweep_table(page)
    wait_done(page, 900, watch if name.startswith("02") else None)
    shot(page, name.removesuffix(".ipynb"))
    check_outputs(page, name)
    one_ray(ray_session, owner)
    if not name.startswith("02"):
        return
    # the live table changed at least twice while the sweep ran: starting, trials running, finished
    assert len(tables) >= 3, f"the sweep's table changed {len(tables) - 1} times: {tables}"
    assert "finished" in tables[-1], tables[-1]

    # a second time, in a fresh kernel: the sweep resumes, shows the same leaderboard, trains nothing
    board = output_of(page, "sweep.leaderboard()")
    exp = lab.runs / f"browser-{run}"
    trained = trial_results(exp)
    assert trained, exp
    menu(page, "Edit", "Clear Outputs of All Cells")
    menu(page, "Kernel", "Restart Kernel and Run All Cells", confirm=True)
    again, watch = sweep_table(page)
    wait_done(page, 600, watch)
    shot(page, "02_sweep-again")
    check_outputs(page, name)
    assert output_of(page, "sweep.leaderboard()") == board
    assert trial_results(exp) == trained  # no epoch reported again
    assert again and not any("starting workers" in t or "running" in t.split("</b>", 1)[-1] for t in again), again
    assert "finished" in again[-1], again[-1]


def test_three_notebooks_at_once(ray_session, lab, context):
    """01, 02 and 03 in three kernels at once (three tabs of one JupyterLab): one Ray, one Serve."""
    owner = local_ray.state()["pid"]
    pages = {}
    for name, text in params(lab.serve_port, uuid.uuid4().hex[:6]).items():
        page = context.new_page()
        open_notebook(page, lab, name)
        set_parameters(page, text)
        menu(page, "Run", "Run All Cells")
        pages[name] = page
    for name, page in pages.items():
        wait_done(page, 1200)
        shot(page, "together-" + name.removesuffix(".ipynb"))
        check_outputs(page, name)
    one_ray(ray_session, owner)
    controllers = [a for a in ray_session.util.list_named_actors(all_namespaces=True)
                   if "SERVE_CONTROLLER" in a["name"]]
    assert len(controllers) == 1, controllers  # one Serve
