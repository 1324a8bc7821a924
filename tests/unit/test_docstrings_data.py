"""The ``docstrings`` data set read from real installed code (the standard library's ``json`` package
here: small, and the same for a given Python)."""

import ast
import inspect
import json

import pytest

import cellforge as cf
from cellforge.data import docstrings as ds


def test_functions_come_without_their_docstring_and_with_its_summary_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = ds.docstrings(packages=("json",), max_tokens=400)
    pairs = dict(zip(data.y, data.x))
    summary = inspect.getdoc(json.JSONEncoder.encode).splitlines()[0]
    code = pairs[summary]
    assert code.startswith("def encode(self, o):")
    tree = ast.parse(code).body[0]
    assert ast.get_docstring(tree) is None and summary not in code
    assert data.groups == data.x and data.name == "docstrings"
    # only public functions whose docstring opens with a paragraph of one line
    names = [ast.parse(c).body[0].name for c in data.x]
    assert names and not [n for n in names if n.startswith("_")]
    assert "dumps" in names and "dump" not in names  # dump's summary runs over two lines
    # the same arguments read the same examples; the cache holds JSON, never a pickle
    cached = list((tmp_path / "cellforge" / "datasets").glob("docstrings-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == [list(p) for p in zip(data.x, data.y)]
    monkeypatch.setattr(ds, "_functions", lambda *a: pytest.fail("read the sources again"))
    again = ds.docstrings(packages=("json",), max_tokens=400)
    assert (again.x, again.y) == (data.x, data.y)


def test_max_tokens_bounds_the_code(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    short = ds.docstrings(packages=("json",), max_tokens=40, cache=False)
    assert short.x and all(len(ds._WORD.findall(c)) <= 40 for c in short.x)
    assert len(short.x) < len(ds.docstrings(packages=("json",), max_tokens=400, cache=False).x)


def test_summary_line_and_the_name_baseline():
    assert ds.summary_line("Return the sum.\n\nLonger text.") == "Return the sum."
    assert ds.summary_line("Return the sum.") == "Return the sum."
    assert ds.summary_line("A summary that\ngoes on.") is None  # not a paragraph of its own
    assert ds.name_baseline("async def fetchAllRows_fast(x):\n    pass") == "fetch all rows fast"
    with pytest.raises(ValueError, match="not a function definition"):
        ds.name_baseline("x = 1")


def test_bad_arguments_name_what_is_accepted():
    with pytest.raises(ValueError, match="packages must be installed.*no_such_pkg"):
        cf.datasets.load("docstrings", packages=("no_such_pkg",))
    with pytest.raises(ValueError, match="max_tokens >= 8"):
        cf.datasets.load("docstrings", max_tokens=2)
