"""What reaches a user's console: cellforge's lines and real problems, not Ray's or TensorFlow's
internals (issue 10, "User-facing noise"). Seconds, no Ray started."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cellforge import _ray, runtime

REPO = Path(__file__).resolve().parents[2]

# lines seen in worker output of `make demo`, `cellforge deploy` and TensorFlow workers on a CPU machine
CHATTER = [
    "[2026-11-29 21:17:06,434 E 7748 7835] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: 'de66122a2dbf3d9d080a475301000000' has constructor arguments in the object store and max_restarts > 0.",
    "[2026-11-29 21:30:38,879 W 2979 2979] (raylet) scheduling_class_util.cc:185: More than 104 types of tasks seen",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795987682.550076   14958 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1795987897.257870   17944 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions",
    "INFO 2026-11-29 21:19:10,703 proxy 127.0.0.1 -- Got updated endpoints: {Deployment(name='Model', "
    "app='digits'): EndpointInfo(route='/v1/models/digits', ...)}.",
    "INFO 2026-11-29 21:18:54,494 controller 3126 -- Adding 1 replica to Deployment(name='Model', app='digits').",
]
# what still shows: cellforge's progress, a worker's traceback, Ray's and Serve's warnings, crashes
SHOWN = [
    "[cellforge] epoch 1/15  loss 2.1  accuracy 0.31",
    "Traceback (most recent call last):",
    '  File "/work/main/platform/cellforge/train/loop.py", line 88, in train_loop',
    "ValueError: inputs hold NaN",
    "WARNING 2026-11-29 21:18:20,744 controller 3126 -- Replica(id='lh881lyb', deployment='Model', app='auto') "
    "failed health check, stopping it.",
    "[2026-11-29 21:30:25,035 C 16785 16785] (raylet) node_manager.cc:3576:  An unexpected system state has occurred.",
    "[2026-11-29 21:30:25,035 F 16785 16785] core_worker.cc:100: Check failed",
    "E0000 00:00:1795987691.726614   14958 some_op.cc:52] a TensorFlow error that survived TF_CPP_MIN_LOG_LEVEL",
    "2026-11-29 21:23:58,700\tWARNING worker.py:1 -- A worker died or was killed while executing a task",
    "",
]


@pytest.mark.parametrize("line", CHATTER)
def test_ray_and_tensorflow_chatter_is_not_shown(line):
    assert not runtime.shown(line)


@pytest.mark.parametrize("line", SHOWN)
def test_progress_tracebacks_and_real_problems_are_shown(line):
    assert runtime.shown(line)


def test_the_driver_prints_only_shown_worker_lines():
    """``filter_worker_output`` wraps the printer that ``ray.init`` registers (here a stand-in), once."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed = []
    dispatcher.add_handler("ray_print_logs", lambda data: printed.append(data))
    try:
        _ray.filter_worker_output(runtime.VISIBLE)
        _ray.filter_worker_output(runtime.VISIBLE)  # a second call does not wrap it twice
        assert sum(name == "ray_print_logs" for name, _ in dispatcher.handlers) == 1
        dispatcher.emit({"pid": 7, "is_err": True, "lines": CHATTER + SHOWN})
        dispatcher.emit({"pid": 8, "is_err": True, "lines": CHATTER})  # nothing left: nothing printed
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert [d["pid"] for d in printed] == [7]
    assert printed[0]["lines"] == SHOWN


def test_cellforge_lines_are_printed_without_rays_worker_prefix():
    """Ray's printer is ``partial(print_to_stdstream, ignore_prefix=...)``: cellforge's own lines go to it
    with ``ignore_prefix=True`` (no "(RayTrainWorker pid=...)"), every other shown line as before."""
    import functools

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed = []
    dispatcher.add_handler("ray_print_logs", functools.partial(
        lambda data, ignore_prefix: printed.append((ignore_prefix, data["lines"])), ignore_prefix=False))
    try:
        _ray.filter_worker_output(runtime.VISIBLE, plain=runtime.mine)
        dispatcher.emit({"pid": 7, "is_err": False, "lines": ["[cellforge] epoch 1/2  loss 0.5", "a user's print"]})
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert printed == [(True, ["[cellforge] epoch 1/2  loss 0.5"]), (False, ["a user's print"])]


def test_quiet_ray_sets_worker_env_and_quiets_the_driver_loggers(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    runtime.quiet_ray()
    runtime.quiet_ray()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # before ray.init: a local Ray's workers inherit it
    assert "TF_ENABLE_ONEDNN_OPTS" not in runtime.WORKER_ENV  # changes numerics, not only output
    serve = logging.getLogger("ray.serve")
    assert serve.filters.count(runtime._warnings_and_up) == 1

    def record(level):
        return logging.LogRecord("ray.serve", level, __file__, 1, "Deployed app 'x' successfully.", None, None)

    assert not serve.filter(record(logging.INFO)) and serve.filter(record(logging.WARNING))
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert not auth.isEnabledFor(logging.WARNING) and auth.isEnabledFor(logging.ERROR)


def test_a_users_own_tensorflow_log_level_wins(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    runtime.quiet_ray()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


# ------------------------------------------------------------------ SIGTERM while serving
def _stop_held_process(sig, preexec_fn=None) -> tuple[int, str, str]:
    """Start a process held in ``hold()``, send ``sig`` once it serves; (exit code, stdout, stderr)."""
    code = "from cellforge.serving.deploy import hold; hold(True, None, 'serving until Ctrl-C')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)
    try:
        assert proc.stdout.readline().strip() == "[cellforge] serving until Ctrl-C"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_sigterm_ends_hold_cleanly():
    """What a container runtime sends stops a held endpoint the way Ctrl-C does: exit 0, no trace
    (tests/integration/test_quiet_ray.py does it with a Ray driver connected)."""
    code, out, err = _stop_held_process(signal.SIGTERM)
    assert code == 0, err
    assert err == "" and "[cellforge] stopping" in out


def test_ctrl_c_ends_hold_started_with_sigint_ignored():
    """A process whose parent ignores SIGINT (a background job; after notebooks ran, the test
    session itself) starts with it ignored and Python installs no Ctrl-C handler: hold sets its own.
    Before, the held process never stopped (seen as a 180 s hang in a full-suite run)."""
    code, out, err = _stop_held_process(signal.SIGINT, lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert code == 0 and err == "" and "[cellforge] stopping" in out, err


def test_hold_puts_the_previous_sigterm_handler_back(monkeypatch):
    import importlib

    deploy = importlib.import_module("cellforge.serving.deploy")  # the package exports the function

    def sleep(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy.time, "sleep", sleep)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    deploy.hold(True, None, "serving")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ------------------------------------------------------------------ notebooks' kernel
@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_name_the_standard_python3_kernel(path):
    """papermill takes the kernel from the notebook's metadata: a project kernel ('cellforge') exists
    only after `make lab` registered it, and papermill then failed with "No such kernel"."""
    from jupyter_client.kernelspec import KernelSpecManager
    from papermill.engines import papermill_engines

    nb = nbformat.read(path, as_version=4)
    name = papermill_engines.nb_kernel_name(engine_name=None, nb=nb)
    assert name == "python3"
    KernelSpecManager().get_kernel_spec(name)  # raises NoSuchKernel when this environment lacks it


def test_papermill_runs_a_notebook_with_its_own_kernelspec(tmp_path):
    """No kernel_name given: papermill uses the committed notebooks' kernelspec, and it resolves to
    the Python running papermill."""
    import papermill

    meta = nbformat.read(REPO / "notebooks" / "01_quickstart.ipynb", as_version=4).metadata
    nb = nbformat.v4.new_notebook(metadata=meta, cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"].strip() == sys.executable


def test_notebook_job_reports_through_the_cellforge_logger(tmp_path, capsys):
    from cellforge import notebook_job

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('boom')")],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, tmp_path / "fails.ipynb")
    assert notebook_job.main([str(tmp_path / "fails.ipynb"), str(tmp_path / "out.ipynb")]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[cellforge]")]
    assert lines[0].startswith("[cellforge] executing ") and lines[-2:] == [
        "[cellforge] notebook failed in cell 1: ValueError: boom",
        f"[cellforge] executed notebook (up to the failure): {tmp_path / 'out.ipynb'}"]
    logging.getLogger("cellforge").setLevel(logging.WARNING)
    try:
        assert notebook_job.main([str(tmp_path / "fails.ipynb"), str(tmp_path / "out2.ipynb")]) == 1
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[cellforge]")]
        assert lines == ["[cellforge] notebook failed in cell 1: ValueError: boom"]  # a job can turn progress off
    finally:
        logging.getLogger("cellforge").setLevel(logging.INFO)


def test_no_bare_progress_print_in_the_package():
    """Progress goes through the ``cellforge`` logger (a notebook or job sets its level); a bare print
    is only for a command's result (predictions, `validate`'s lines, `jobs list`)."""
    package = REPO / "platform" / "cellforge"
    results = {"cli.py", "submit.py", "errors.py"}  # a command's output; errors.py's is in a docstring
    pending: set[str] = set()
    bad = []
    for path in package.rglob("*.py"):
        name = path.relative_to(package).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "print(" not in line or line.lstrip().startswith(("#", ">>>", "...")) or name in pending:
                continue
            if name not in results or "[cellforge]" in line:
                bad.append(f"{name}:{n}: {line.strip()}")
    assert not bad, "use cellforge.log.log instead:\n" + "\n".join(bad)


def test_the_raylets_worker_count_warning_is_not_printed(monkeypatch):
    """Ray's error-message listener prints through ``print_to_stdstream`` itself (not the dispatcher)."""
    from ray._private import worker

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data["lines"]))
    _ray.filter_error_messages(runtime.VISIBLE)
    worker.print_to_stdstream({"pid": "raylet", "is_err": False, "lines": [
        "WARNING: 8 PYTHON worker processes have been started on node: 52da with address: 127.0.0.1, which is 4x"]},
        ignore_prefix=False)
    worker.print_to_stdstream({"pid": "raylet", "is_err": False, "lines": ["a real problem"]}, ignore_prefix=False)
    assert printed == [["a real problem"]]


def test_native_stderr_keeps_real_errors_and_drops_tensorflows_start_up_lines(capfd):
    from cellforge.log import TF_STARTUP, native_stderr_without

    with native_stderr_without(TF_STARTUP):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1796071081.863753   32575 cudart_stub.cc:31] Could not find cuda drivers\n"
                    b"E0000 00:00:1796071028.511748   31816 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
                    b"E0000 00:00:1796071028.511748   31816 op_kernel.cc:1] a real kernel error\n"
                    b"Traceback (most recent call last):\n")
    err = capfd.readouterr().err
    assert err == ("E0000 00:00:1796071028.511748   31816 op_kernel.cc:1] a real kernel error\n"
                   "Traceback (most recent call last):\n"), err


def test_importing_the_keras_backend_prints_nothing():
    out = subprocess.run([sys.executable, "-c", "import cellforge.backends.keras"], capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stderr
