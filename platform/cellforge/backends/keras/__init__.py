"""The Keras 3 backend (framework 'tensorflow'): Keras' fused RNN layers for built-in cells, any
cell through its ops; trained on Ray Train with gradients all-reduced over gloo (see ``train``)."""

from __future__ import annotations

from cellforge.backends.keras.model import OPS, Net, build, from_canonical, predict, to_canonical
from cellforge.backends.keras.train import Fitter, make_trainer
from cellforge.backends.numpy.model import init_params

NAME = "tensorflow"
TRAINS = True

__all__ = ["NAME", "OPS", "TRAINS", "Fitter", "Net", "build", "from_canonical", "init_params", "make_trainer",
           "predict", "to_canonical"]
