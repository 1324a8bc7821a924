"""The ONNX Runtime backend: inference only, from graphs built by :mod:`.graph` (see ``model``)."""

from __future__ import annotations

from cellforge.backends.numpy.model import init_params
from cellforge.backends.onnx.model import (
    Net,
    build,
    from_canonical,
    predict,
    session,
    step,
    to_canonical,
)
from cellforge.errors import SpecError

NAME = "onnx"
TRAINS = False
Fitter = None


def make_trainer(worker_fn, config, scaling_config, run_config):
    raise SpecError([("framework", "the onnx backend is an inference runtime and does not train; "
                                   "use 'torch' or 'tensorflow'")])


__all__ = ["NAME", "TRAINS", "Fitter", "Net", "build", "from_canonical", "init_params", "make_trainer",
           "predict", "session", "step", "to_canonical"]
