"""The numpy backend: the reference network, a full runtime for inference (it does not train)."""

from __future__ import annotations

from cellforge.backends.numpy.model import (
    OPS,
    Net,
    build,
    features,
    forward,
    from_canonical,
    init_params,
    predict,
    run_direction,
    step,
    to_canonical,
)
from cellforge.errors import SpecError

NAME = "numpy"
TRAINS = False
Fitter = None


def make_trainer(worker_fn, config, scaling_config, run_config):
    raise SpecError([("framework", "the numpy backend is the reference runtime and does not train; "
                                   "use 'torch' or 'tensorflow'")])


__all__ = ["NAME", "OPS", "TRAINS", "Fitter", "Net", "build", "features", "forward", "from_canonical",
           "init_params", "make_trainer", "predict", "run_direction", "step", "to_canonical"]
