"""TensorBoard event files of a run, written by rank 0 (``fit(..., tensorboard=True)`` or
``CELLFORGE_TENSORBOARD=1``; read them with ``tensorboard --logdir runs/``).

Each epoch: one scalar per number of the history row (``loss``, ``lr``, ``val_*``, ``time_s``, under
the same names as ``FitResult.history``), a histogram of every weight under its canonical name
(``weights/<name>``, the same in both frameworks), and in PyTorch one of every parameter's gradient
at the epoch's last step (``gradients/<name>``; Keras applies its gradients inside the compiled
step, where keeping a copy would cost one per step). Written with tensorboardX, which needs neither
TensorFlow nor TensorBoard itself (``torch.utils.tensorboard`` imports TensorFlow when it is
installed: 20 s here). The files land in ``<runs>/<name>/tensorboard`` on rank 0's machine: on a
cluster, make the runs directory a shared mount.

    >>> import tempfile, numpy as np
    >>> log = EventLog(tempfile.mkdtemp())
    >>> log.epoch({"epoch": 1, "loss": 0.5, "note": "text is skipped"}, 1, {"w": np.ones((2, 2))}, {})
    >>> log.close()
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

ENV = "CELLFORGE_TENSORBOARD"


def enabled(setting: bool | None) -> bool:
    """``fit``'s ``tensorboard`` argument, or when None ``$CELLFORGE_TENSORBOARD`` (1/true/yes)."""
    if setting is not None:
        return bool(setting)
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def logdir(run_dir: Path) -> Path:
    return Path(run_dir) / "tensorboard"


class EventLog:
    """One run's event file writer (a no-op without a directory: every rank but 0, or turned off)."""

    def __init__(self, directory: str | Path | None):
        self.writer = None
        if directory is not None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(directory), flush_secs=30)

    def epoch(self, row: dict[str, Any], step: int, weights: dict[str, np.ndarray] | None,
              gradients: dict[str, np.ndarray]) -> None:
        if self.writer is None:
            return
        w = self.writer
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                w.add_scalar(k, float(v), step)
        for prefix, arrays in (("weights", weights or {}), ("gradients", gradients)):
            for name, a in arrays.items():
                a = np.asarray(a, np.float64)
                if a.size and np.isfinite(a).all():
                    w.add_histogram(f"{prefix}/{name}", a, step)
        w.flush()  # an epoch is on disk when the next starts: a killed run keeps what it logged

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
