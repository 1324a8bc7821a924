"""Raw data in, padded arrays out — with the preprocessing state a bundle keeps.

``sources`` normalises what a user has (arrays, tables, files, Ray datasets) into
:class:`Sequences` or a :class:`Series`; ``preprocess`` splits it and fits scalers, vocabulary and
labels on the training split (``prepare``); ``datasets`` holds the built-in data sets.
"""

from cellforge.data import datasets
from cellforge.data.preprocess import Prepared, Preprocessor, prepare, split_indices
from cellforge.data.sources import Sequences, Series, read_table, to_source

__all__ = ["Prepared", "Preprocessor", "Sequences", "Series", "datasets", "prepare", "read_table",
           "split_indices", "to_source"]
