"""Training on Ray Train: ``fit`` (a spec and data in; metrics, history and a verified bundle out).

Modules: ``fit`` (the driver side), ``loop`` (what every worker runs), ``worker`` (what a worker
knows, the LR schedule), ``checkpoint`` (the per-epoch checkpoint format).
"""

from cellforge.train.fit import FitResult, fit

__all__ = ["FitResult", "fit"]
