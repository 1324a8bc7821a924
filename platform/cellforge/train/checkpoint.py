"""A training checkpoint: the weights (and the best epoch's), the optimizer, the schedule and the
loop's state — safetensors and JSON, no pickle.

    checkpoint_<n>/
      weights.safetensors   this epoch's weights, canonical names
      best.safetensors      the best epoch's weights (early stopping), when there is one
      optimizer.*           the backend's optimizer state (``Fitter.save_state``)
      state.json            epoch, history, early-stopping counters, schedule

Ray Train persists the checkpoints its workers report. A run trained in the driver's own process
(``cellforge.train.fit.in_process``, or a sweep trial in Ray Train's local mode) has nobody to persist
them, so there the loop keeps its own in the run's folder, in the same layout (``keep``), and a rerun
resumes from the newest (``latest``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file


def save(fitter, d: Path, weights, best_weights, state) -> None:
    """Write one epoch's checkpoint into ``d`` (rank 0)."""
    save_file(weights, str(d / "weights.safetensors"))
    if best_weights is not None:
        save_file(best_weights, str(d / "best.safetensors"))
    fitter.save_state(d)
    (d / "state.json").write_text(json.dumps(state | {"lr": fitter.lr.state()}))


def restore(fitter, d: Path) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Load a checkpoint into ``fitter``; returns the loop's state and the best weights so far."""
    state = json.loads((d / "state.json").read_text())
    fitter.set_weights(load_file(str(d / "weights.safetensors")))
    fitter.load_state(d)
    fitter.lr.load(state.pop("lr"))
    best = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").exists() else None
    return state, best


def final_weights(checkpoint_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The weights a finished run keeps (the best epoch's under early stopping) and its state."""
    state = json.loads((checkpoint_dir / "state.json").read_text())
    best = checkpoint_dir / "best.safetensors"
    return load_file(str(best if best.exists() else checkpoint_dir / "weights.safetensors")), state


def keep(run_dir: Path, fitter, weights, best_weights, state, num_to_keep: int = 2) -> Path:
    """``save`` into ``run_dir`` as ``checkpoint_epoch_<n>``, keeping the newest ``num_to_keep``. The
    folder is written under a hidden name and renamed once complete: a run killed mid-write leaves no
    half checkpoint to resume from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run_dir))
    save(fitter, tmp, weights, best_weights, state)
    final = run_dir / f"checkpoint_epoch_{state['epoch']:06d}"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(run_dir.glob("checkpoint_epoch_*"))[:-num_to_keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (by epoch), in ``keep``'s layout or Ray Train's
    (``checkpoint_<time>``, written by its workers), so a run trained by workers resumes in the driver's
    process too. Clears what a killed ``keep`` left half written.

        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> for name, epoch in [("checkpoint_epoch_000003", 3), ("checkpoint_2026-11-30_17-20-01.5", 4)]:
        ...     (run / name).mkdir()
        ...     _ = (run / name / "state.json").write_text(json.dumps({"epoch": epoch}))
        >>> (run / "checkpoint_2026-11-30_17-20-09.1").mkdir()  # Ray's copy, cut short by a kill
        >>> latest(run).name
        'checkpoint_2026-11-30_17-20-01.5'
    """
    for tmp in run_dir.glob(".checkpoint-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    newest, best = None, -1
    for d in run_dir.glob("checkpoint_*"):
        try:
            epoch = json.loads((d / "state.json").read_text())["epoch"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a cellforge checkpoint, or one cut short
        if epoch > best:
            newest, best = d, epoch
    return newest
