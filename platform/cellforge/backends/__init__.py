"""Backends: numpy (the reference), torch and keras — the same contract each, one place picks.

Each backend is a package with the same modules — ``model`` (the network, its ops and the
canonical-weight converters) and, for those that train, ``train`` (the per-worker ``Fitter``
and the Ray trainer) — and exposes the :class:`Backend` functions from its ``__init__``. The
network and its canonical weights are defined once, in :mod:`cellforge.backends.network`.

    >>> from cellforge import ModelSpec
    >>> from cellforge.backends import get_backend
    >>> spec = ModelSpec(task="regress", cell="gru", hidden_size=8, input={"num_features": 3})
    >>> ref = get_backend("numpy")
    >>> net = ref.build(spec, ref.init_params(spec))
    >>> ref.predict(net, np.zeros((2, 5, 3), np.float32), np.array([5, 2])).shape
    (2, 1)

Adding a runtime: a package here with the same functions, its name in ``BACKENDS``, and its name
in the deploy config's ``runtime``; ``tests/unit/test_backends.py`` holds it to the contract.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np  # noqa: F401 - used by the example above

# name -> module. Imported on first use: torch and TensorFlow take seconds to import
BACKENDS: dict[str, str] = {
    "numpy": "cellforge.backends.numpy",
    "torch": "cellforge.backends.torch",
    "tensorflow": "cellforge.backends.keras",
    "keras": "cellforge.backends.keras",
    "onnx": "cellforge.backends.onnx",  # ONNX Runtime, inference only (cellforge.backends.onnx.graph)
}


@runtime_checkable
class Backend(Protocol):
    """What every backend module provides.

    ``build(spec, params=None)`` a network (random init, or canonical weights loaded);
    ``predict(net, x, lengths)`` float32 numpy outputs; ``to_canonical(net)`` /
    ``from_canonical(net, params)`` the weight converters; ``init_params(spec, seed)`` canonical
    random weights; ``Fitter(spec, info)`` one Ray Train worker's model and optimizer (None for an
    inference-only backend) and ``make_trainer(worker_fn, config, scaling, run_config)`` its
    Ray Train trainer.
    """

    NAME: str
    TRAINS: bool
    build: Callable[..., Any]
    predict: Callable[..., np.ndarray]
    to_canonical: Callable[..., dict[str, np.ndarray]]
    from_canonical: Callable[..., Any]
    init_params: Callable[..., dict[str, np.ndarray]]
    Fitter: Any
    make_trainer: Callable[..., Any]


def get_backend(name: str) -> Backend:
    """The backend for ``name``: 'numpy', 'torch', 'tensorflow' (alias 'keras') or 'onnx'."""
    try:
        module = BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown framework {name!r}; known: {sorted(BACKENDS)}") from None
    return importlib.import_module(module)
