"""cellforge's logger: progress and real problems, one ``[cellforge]`` line each.

    >>> import logging
    >>> logging.getLogger("cellforge").setLevel(logging.WARNING)   # a notebook or job: quieter
    >>> logging.getLogger("cellforge").setLevel(logging.INFO)      # the default: progress lines

Lines go to the current ``sys.stdout`` (a notebook cell's output, a job's log). Ray's and
TensorFlow's own logs stay in Ray's log directory (``runtime`` quiets them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

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


# What TensorFlow 2.21's C++ side writes to the process's stderr while it is imported and looks for
# GPUs: absl's info/warning lines, its "before absl::InitializeLog()" notice, and "failed call to
# cuInit" on a machine without CUDA. absl writes them before TF reads TF_CPP_MIN_LOG_LEVEL, so that
# setting cannot silence them (abseil-cpp PR 1718/1957: lines under the threshold still print then).
TF_STARTUP = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w/.-]+:\d+\] "
                        r"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
                        r"|^E\d{4} .*\] failed call to cuInit: ")


@contextlib.contextmanager
def native_stderr_without(noise: re.Pattern):
    """Catch what native code writes to file descriptor 2 during the block, then write it out again
    without the lines ``noise`` matches: a real error still shows, after the block.

        >>> with native_stderr_without(re.compile("^chatter")):
        ...     _ = os.write(2, b"chatter from C\\n")
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines() if not noise.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
