"""What the package's docstring examples find in their namespace: ``cf``, ``np``, and a digits
classifier ``bundle`` (seeded random weights: the examples show shapes and fields, not accuracy)
with the raw ``images`` it reads."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def _example_bundle(tmp_path_factory):
    import cellforge as cf
    from cellforge import bundle
    from cellforge.backends.numpy import init_params
    from cellforge.data import prepare

    data = cf.datasets.load("digits")
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), data)
    path = bundle.save(tmp_path_factory.mktemp("example") / "bundle", spec, init_params(spec, 0),
                       prepared.preprocessor.state, {})
    return path, data.x


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    if not isinstance(request.node, pytest.DoctestItem):
        return
    import cellforge as cf

    path, images = request.getfixturevalue("_example_bundle")
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))  # files land there
    doctest_namespace.update(cf=cf, np=np, bundle=str(path), images=images)
