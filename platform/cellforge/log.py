"""cellforge's logger: progress and real problems, one ``[cellforge]`` line each.

    >>> import logging
    >>> logging.getLogger("cellforge").setLevel(logging.WARNING)   # a notebook or job: quieter
    >>> logging.getLogger("cellforge").setLevel(logging.INFO)      # the default: progress lines

Lines go to the current ``sys.stdout`` (a notebook cell's output, a job's log). Ray's and
TensorFlow's own logs stay in Ray's log directory (``runtime`` quiets them).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("cellforge")


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is at the time (notebooks and pytest swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging sets it in __init__; the property always reads sys.stdout
        pass


if not log.handlers:
    _handler = _Stdout()
    _handler.setFormatter(logging.Formatter("[cellforge] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # a root handler the user configured would print every line twice
