"""A fit in the driver's process (the loop itself, without Ray Train): when it is chosen, and the checkpoints its
loop keeps in the run's folder, since nobody else persists them there."""

import importlib
import json

import numpy as np
import pytest

from cellforge import ModelSpec
from cellforge.backends.torch.train import Fitter
from cellforge.train import checkpoint
from cellforge.train.worker import WorkerInfo

pytestmark = pytest.mark.unit
fit = importlib.import_module("cellforge.train.fit")  # the module (cellforge.train.fit is also the function)


@pytest.mark.parametrize(("workers", "use_gpu", "max_failures", "local", "env", "expected"), [
    (1, False, 0, True, None, True),
    (2, False, 0, True, None, False),   # data-parallel: Ray Train's workers
    (1, True, 0, True, None, False),    # a GPU worker
    (1, False, 1, True, None, False),   # failures to recover from need a worker to restart
    (1, False, 0, False, None, False),  # a cluster: the driver may be a laptop
    (1, False, 0, True, "0", False),    # opted out
])
def test_one_cpu_worker_on_a_local_ray_trains_in_process(monkeypatch, workers, use_gpu, max_failures, local, env,
                                                         expected):
    monkeypatch.setattr(fit, "_local_node", lambda: local)
    if env is None:
        monkeypatch.delenv("CELLFORGE_TRAIN_IN_PROCESS", raising=False)
    else:
        monkeypatch.setenv("CELLFORGE_TRAIN_IN_PROCESS", env)
    assert fit.in_process(workers, use_gpu, max_failures) is expected


def _fitter(seed):
    spec = ModelSpec(task="classify", cell="gru", hidden_size=8, num_classes=3, input={"num_features": 2},
                     training={"seed": seed})
    return Fitter(spec, WorkerInfo(0, 1, 1, False))


def test_kept_checkpoints_restore_exactly_and_only_the_newest_two_stay(tmp_path):
    fitter = _fitter(0)
    for epoch in range(4):
        state = {"epoch": epoch, "history": [{"epoch": e + 1} for e in range(epoch + 1)], "best": None, "bad": 0}
        kept = checkpoint.keep(tmp_path, fitter, fitter.get_weights(), None, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]
    assert checkpoint.latest(tmp_path) == kept
    other = _fitter(1)  # other initial weights: restoring must overwrite every one of them
    state, best = checkpoint.restore(other, kept)
    assert state["epoch"] == 3 and len(state["history"]) == 4 and best is None
    for name, w in fitter.get_weights().items():
        np.testing.assert_array_equal(other.get_weights()[name], w)


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    fitter = _fitter(0)
    checkpoint.keep(tmp_path, fitter, fitter.get_weights(), None, {"epoch": 0, "history": []})
    (tmp_path / ".checkpoint-killed").mkdir()  # a kill mid-write leaves only its hidden folder
    (tmp_path / ".checkpoint-killed" / "state.json").write_text(json.dumps({"epoch": 5}))
    (tmp_path / "checkpoint_2026-11-30_17-00-00.000000").mkdir()  # Ray's copy of a worker's, cut short
    assert checkpoint.latest(tmp_path).name == "checkpoint_epoch_000000"
    assert not (tmp_path / ".checkpoint-killed").exists()


IN_PROCESS_RUN = r'''
import json, sys
from pathlib import Path
import numpy as np
from cellforge import ModelSpec
from cellforge.data import prepare
from cellforge.train.checkpoint import final_weights, latest
from cellforge.train.fit import worker_config
from cellforge.train.loop import LocalSession, worker_loop

run = Path(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.normal(size=(120, 5, 2))
y = (x[:, :, 0].sum(1) > 0).astype(int)
epochs = []
for n in (2, 3):  # two epochs, then the same run asked for three: it resumes after its second
    spec, prepared = prepare(ModelSpec(task="classify", cell="gru", hidden_size=8, num_classes=2,
                                       input={"num_features": 2}, training={"epochs": n, "batch_size": 16}),
                             (x, y), None, None)
    last = latest(run)
    session = LocalSession()
    worker_loop(worker_config(spec, prepared, False, verbose=False, keep_checkpoints=run,
                              init_checkpoint=None if last is None else str(last)) | {"session": session})
    weights, state = final_weights(Path(session.checkpoint))
    epochs.append([Path(session.checkpoint).name, [r["epoch"] for r in state["history"]], state["starts"]])
print(json.dumps({"runs": epochs, "ray_train": any(m.startswith("ray.train") for m in sys.modules),
                  "ray_started": __import__("ray").is_initialized()}))
'''


def test_the_loop_in_process_keeps_its_checkpoints_resumes_and_needs_no_ray_train(tmp_path):
    """``fit.in_process``'s run: the loop itself with a ``LocalSession``. Ray Train is never imported
    (its import was ~1.8 s of a first fit) and no Ray is started; each epoch's checkpoint is kept in
    the run's folder and the last one is the session's; asked for more epochs, the run resumes."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", IN_PROCESS_RUN, str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["runs"] == [["checkpoint_epoch_000001", [1, 2], [0]], ["checkpoint_epoch_000002", [1, 2, 3], [0, 2]]]
    assert not got["ray_train"] and not got["ray_started"]
