"""A training checkpoint: the weights (and the best epoch's), the optimizer, the schedule and the
loop's state — safetensors and JSON, no pickle.

    checkpoint_<n>/
      weights.safetensors   this epoch's weights, canonical names
      best.safetensors      the best epoch's weights (early stopping), when there is one
      optimizer.*           the backend's optimizer state (``Fitter.save_state``)
      state.json            epoch, history, early-stopping counters, schedule
"""

from __future__ import annotations

import json
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
