"""cellforge: declare a recurrent model once; train it in PyTorch or Keras on Ray Train,
sweep it with Ray Tune, serve it with Ray Serve.

    >>> import cellforge as cf
    >>> spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=64, num_layers=2, bidirectional=True)
    >>> result = cf.fit(spec, cf.datasets.load("digits"), workers=2, epochs=10)   # doctest: +SKIP
    >>> cf.load(result.bundle).predict(images)                                    # doctest: +SKIP

The flow, one package each: ``spec`` + ``cells`` (declare) -> ``data`` -> ``train`` (Ray Train,
on a ``backends`` framework) -> ``bundle`` -> ``tune`` (Ray Tune) -> ``serving`` (Ray Serve)
-> ``client``; ``jobs`` and ``cli`` drive them from files and the terminal.
"""

from cellforge import interpret, plot
from cellforge.attention import Attention, register_attention
from cellforge.cells import Cell, register_cell
from cellforge.client import Client
from cellforge.data import Sequences, Series, datasets
from cellforge.errors import BundleError, SpecError
from cellforge.model import Model, load
from cellforge.registry import runs
from cellforge.serving import deploy
from cellforge.spec import ModelSpec
from cellforge.train import FitResult, fit
from cellforge.tune import choice, grid, loguniform, randint, sweep, uniform

__all__ = ["Attention", "BundleError", "Cell", "Client", "FitResult", "Model", "ModelSpec", "Sequences", "Series",
           "SpecError", "choice", "datasets", "deploy", "fit", "grid", "interpret", "load", "loguniform", "plot",
           "randint", "register_attention", "register_cell", "runs", "sweep", "uniform"]
__version__ = "0.1.0"
