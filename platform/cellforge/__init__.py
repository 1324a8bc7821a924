"""cellforge: declare a recurrent model once; train it in PyTorch or Keras on Ray Train,
sweep it with Ray Tune, serve it with Ray Serve.

    >>> import cellforge as cf
    >>> spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=64, num_layers=2, bidirectional=True)
    >>> result = cf.fit(spec, cf.datasets.load("digits"), workers=2, epochs=10)   # doctest: +SKIP
    >>> cf.load(result.bundle).predict(images)                                    # doctest: +SKIP
"""

from cellforge.bundle import BundleError
from cellforge.cells import Cell, register_cell
from cellforge.client import Client
from cellforge.data import Sequences, Series, datasets
from cellforge.model import Model, load
from cellforge.serving import deploy
from cellforge.spec import ModelSpec, SpecError
from cellforge.train import FitResult, fit

__all__ = ["BundleError", "Cell", "Client", "FitResult", "Model", "ModelSpec", "Sequences", "Series", "SpecError",
           "datasets", "deploy", "fit", "load", "register_cell"]
__version__ = "0.1.0"
