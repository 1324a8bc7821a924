"""The PyTorch backend: fused cuDNN/oneDNN RNNs for built-in cells, any cell through its ops."""

from __future__ import annotations

from cellforge.backends.numpy.model import init_params
from cellforge.backends.torch.model import (
           OPS,
           Net,
           build,
           from_canonical,
           full_float32,
           predict,
           to_canonical,
           to_cuda,
)
from cellforge.backends.torch.train import Fitter, make_trainer

NAME = "torch"
TRAINS = True

__all__ = ["NAME", "OPS", "TRAINS", "Fitter", "Net", "build", "from_canonical", "full_float32", "init_params",
           "make_trainer", "predict", "to_canonical", "to_cuda"]
