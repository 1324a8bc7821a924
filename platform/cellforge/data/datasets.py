"""Built-in data sets: nothing is downloaded, each ships in a package or is generated.

    >>> import cellforge as cf
    >>> cf.datasets.load("adding", n=100, length=50).x.shape
    (100, 50, 2)
"""

from __future__ import annotations

import numpy as np

from cellforge.data.sources import Sequences, Series


def digits() -> Sequences:
    """scikit-learn's 8x8 handwritten digits, each image read as 8 steps of 8 pixels (1797 images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return Sequences(d.images.astype(np.float32), d.target.astype(np.int64), name="digits")


def sunspots() -> Series:
    """statsmodels' yearly sunspot numbers, 1700-2008 (309 values)."""
    from statsmodels.datasets import sunspots as ss

    df = ss.load_pandas().data
    return Series(df["SUNACTIVITY"].to_numpy(np.float64), ["SUNACTIVITY"], name="sunspots")


def adding(n: int = 10000, length: int = 100, seed: int = 0) -> Sequences:
    """The adding problem (Hochreiter & Schmidhuber 1997): steps carry (value, marker); the target
    is the sum of the two values whose marker is 1, one in each half. Predicting the mean (1.0)
    scores an MSE of about 0.167."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (n, length))
    marks = np.zeros((n, length))
    half = length // 2
    first, second = rng.integers(0, half, n), rng.integers(half, length, n)
    marks[np.arange(n), first] = 1
    marks[np.arange(n), second] = 1
    y = values[np.arange(n), first] + values[np.arange(n), second]
    return Sequences(np.stack([values, marks], -1).astype(np.float32), y.astype(np.float32), name="adding")


DATASETS = {"digits": digits, "sunspots": sunspots, "adding": adding}


def load(name: str, **kwargs) -> Sequences | Series:
    """Load a built-in data set by name: ``digits``, ``sunspots`` or ``adding``."""
    try:
        fn = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known data sets: {sorted(DATASETS)}") from None
    return fn(**kwargs)
