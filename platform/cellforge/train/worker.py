"""What a training worker knows about itself, and the framework-neutral learning-rate schedule.

    >>> from cellforge import ModelSpec
    >>> lr = LRSchedule(ModelSpec(training={"lr": 0.1, "lr_schedule": "step", "lr_step_size": 2, "lr_gamma": 0.5}))
    >>> for _ in range(4):
    ...     lr.end_epoch(None)
    >>> lr.value
    0.025
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellforge.spec import ModelSpec


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    world: int
    local_world: int
    use_gpu: bool


class LRSchedule:
    """Per-epoch learning rate, framework-neutral: step, exponential, cosine, plateau."""

    def __init__(self, spec: ModelSpec):
        self.t = spec.training
        self.value, self.best, self.bad, self.epoch = self.t.lr, float("inf"), 0, 0

    def end_epoch(self, val_loss: float | None) -> None:
        t = self.t
        self.epoch += 1
        if t.lr_schedule == "step":
            self.value = t.lr * t.lr_gamma ** (self.epoch // t.lr_step_size)
        elif t.lr_schedule == "exponential":
            self.value = t.lr * t.lr_gamma ** self.epoch
        elif t.lr_schedule == "cosine":
            self.value = 0.5 * t.lr * (1 + np.cos(np.pi * min(self.epoch, t.epochs) / t.epochs))
        elif t.lr_schedule == "plateau" and val_loss is not None:
            if val_loss < self.best - 1e-12:
                self.best, self.bad = val_loss, 0
            else:
                self.bad += 1
                if self.bad >= t.lr_patience:
                    self.value, self.bad = self.value * t.lr_gamma, 0

    def state(self) -> dict:
        return {"value": self.value, "best": self.best if np.isfinite(self.best) else None,
                "bad": self.bad, "epoch": self.epoch}

    def load(self, s: dict) -> None:
        self.value, self.bad, self.epoch = s["value"], s["bad"], s["epoch"]
        self.best = float("inf") if s["best"] is None else s["best"]
