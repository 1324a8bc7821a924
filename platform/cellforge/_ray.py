"""Every private Ray API cellforge uses, in one place, each with the Ray version it was checked against.

When Ray moves one of these, this module is the only one to change; each function says what the
public alternative lacks. Ray is imported inside each function: ``import cellforge`` stays fast.
"""

from __future__ import annotations

import logging

CHECKED_AGAINST = "2.60.0"


def loopback_only() -> None:
    """Keep an embedded Ray's node on 127.0.0.1 (checked against Ray 2.60.0).

    Ray resolves ``_node_ip_address="127.0.0.1"`` to the machine's reachable IP unless cluster mode
    is off, as on macOS; ``ray.init`` has no public switch for it. The environment variable covers
    the processes Ray starts, the constant this one (read at import, so it is set directly)."""
    import os

    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def quiet_train_reports() -> None:
    """Silence Ray Train V2's "Reporting training result ..." line per ``report()`` (checked against Ray
    2.60.0): its logger is named by the file path of a private module, and cellforge's epoch line
    already says it all."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def controller_callback_class() -> type:
    """Ray Train V2's ``ControllerCallback`` (checked against Ray 2.60.0): the only hook that runs in a
    Train run's controller at start, where a sweep trial learns the handle it aborts the run with."""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return ControllerCallback


def serve_http_address() -> tuple[str, int]:
    """(host, port) of the running Serve's HTTP proxy (checked against Ray 2.60.0); ``serve.status()``
    does not report them."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    return http.host, http.port


def quiet_token_auth_notice() -> None:
    """Drop the "Token authentication is enabled for this Ray cluster" warning every new local Ray logs
    (checked against Ray 2.60.0); token authentication itself stays on. ``RAY_AUTH_MODE=token`` would
    also silence it, but Ray reads that variable once, when ``ray`` is imported, and cellforge cannot
    be sure to set it first; the notice comes from a private module's logger."""
    from ray._private.authentication import authentication_token_setup

    logging.getLogger(authentication_token_setup.__name__).setLevel(logging.ERROR)


def filter_worker_output(keep, plain=None) -> None:
    """Print only the lines of the workers' stdout/stderr that ``keep(batch)`` returns (a batch: Ray's
    dict of one worker's ``pid`` and ``lines``) on this driver, and those that ``plain(line)`` accepts
    without Ray's ``(RayTrainWorker pid=...)`` prefix (checked
    against Ray 2.60.0). ``ray.init(log_to_driver=...)`` is all or nothing, and cellforge's epoch lines
    and a worker's traceback come that way; Ray registers its printer (a ``functools.partial`` of
    ``print_to_stdstream`` with ``ignore_prefix``) as the ``ray_print_logs`` handler of a private
    dispatcher at every ``ray.init``, so call this after it. Every line stays in the worker's log file
    in Ray's log directory."""
    import functools

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    for name, handler in list(dispatcher.handlers):
        if name != "ray_print_logs" or getattr(handler, "keeps", None) is keep:
            continue
        bare = functools.partial(handler.func, ignore_prefix=True) if isinstance(handler, functools.partial) else handler

        def filtered(data, show=handler, bare=bare):
            lines = keep(data)
            as_is = [line for line in lines if plain is not None and plain(line)]
            rest = [line for line in lines if line not in as_is]
            if as_is:
                bare({**data, "lines": as_is})
            if rest:
                show({**data, "lines": rest})

        filtered.keeps = keep
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, filtered)
