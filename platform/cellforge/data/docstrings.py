"""The ``docstrings`` data set: summarisation of real code. Each example is a function from an installed
package with its docstring taken out (the input) and the docstring's summary line (the target).

Functions are read with ``ast`` from the packages' source files, in sorted order, so the data set is
the same for the same package versions. A function counts when it is public (its name does not start
with ``_``), its docstring opens with a one-line summary (PEP 257: the first line alone in its
paragraph), and its code without the docstring is at most ``max_tokens`` word tokens; test and
vendored modules are skipped. Reading the four default packages parses ~2,500 files (40 s on a quiet
2-core machine), so the examples are kept as JSON under ``~/.cache/cellforge``, keyed by the package
versions and the arguments.

``name_baseline`` is the reference a model must beat: the function's own name split into words.

    >>> name_baseline("def get_feature_names_out(self, input_features=None):\\n    return 1")
    'get feature names out'
    >>> name_baseline("def fromArrays(a):\\n    pass")
    'from arrays'
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path

from cellforge.data.sources import Sequences

PACKAGES = ("numpy", "pandas", "sklearn", "statsmodels")
DISTRIBUTIONS = {"sklearn": "scikit-learn"}  # import name -> distribution name, for its version
SKIPPED_DIRS = {"tests", "testing", "_vendor", "externals", "vendored"}
_WORD = re.compile(r"\w+|[^\w\s]")  # the word tokenizer's tokens (data.preprocess)


def docstrings(packages: tuple[str, ...] = PACKAGES, max_tokens: int = 120, max_summary_chars: int = 100,
               cache: bool = True) -> Sequences:
    """Functions of ``packages`` (code without its docstring) -> their docstring's summary line.

    ``groups`` is the code itself: a function that several modules repeat word for word lands in one
    split, so a test function is never one training saw."""
    packages = tuple(packages)
    unknown = [p for p in packages if importlib.util.find_spec(p) is None]
    if unknown or not packages:
        raise ValueError(f"docstrings: packages must be installed importable packages, got {list(packages)} "
                         f"(not found: {unknown})")
    if max_tokens < 8 or max_summary_chars < 8:
        raise ValueError(f"docstrings: expected max_tokens >= 8 and max_summary_chars >= 8, got "
                         f"{max_tokens} and {max_summary_chars}")
    versions = {p: _version(p) for p in packages}
    key = json.dumps([versions, max_tokens, max_summary_chars], sort_keys=True)
    path = _cache_dir() / f"docstrings-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache and path.is_file():
        pairs = json.loads(path.read_text())
    else:
        pairs = [pair for p in packages for pair in _functions(p, max_tokens, max_summary_chars)]
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(pairs))
            tmp.replace(path)  # atomic: two processes building it at once both leave a whole file
    return Sequences([c for c, _ in pairs], [s for _, s in pairs], name="docstrings", groups=[c for c, _ in pairs])


def name_baseline(code: str) -> str:
    """The function's name as words: snake_case and camelCase split, lower-cased."""
    name = re.match(r"\s*(?:async\s+)?def\s+(\w+)", code)
    if name is None:
        raise ValueError(f"docstrings: not a function definition: {code[:40]!r}")
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name.group(1)).replace("_", " ")
    return " ".join(words.lower().split())


def summary_line(doc: str) -> str | None:
    """The docstring's first line when it is a paragraph of its own (PEP 257's summary line), else None."""
    lines = doc.strip().splitlines()
    if not lines or (len(lines) > 1 and lines[1].strip()):
        return None
    return lines[0].strip() or None


def _functions(package: str, max_tokens: int, max_summary_chars: int) -> list[tuple[str, str]]:
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    pairs = []
    for f in sorted(root.rglob("*.py")):
        if SKIPPED_DIRS & set(f.relative_to(root).parts[:-1]) or f.name == "conftest.py":
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            summary = summary_line(doc) if doc else None
            if summary is None or len(summary) > max_summary_chars:
                continue
            node.body = node.body[1:] or [ast.Pass()]  # the docstring out: the model must not copy it
            node.decorator_list = []
            code = ast.unparse(node)
            if len(_WORD.findall(code)) <= max_tokens:
                pairs.append((code, summary))
    return pairs


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellforge" / "datasets"
