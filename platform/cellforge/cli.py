"""The ``cellforge`` command: a thin layer over the Python API.

    cellforge run jobs/quickstart.yaml        # run a job file on the embedded Ray (or --address)
    cellforge validate jobs/quickstart.yaml   # check a job file, every problem at once
"""

from __future__ import annotations

import argparse
import sys

from cellforge.bundle import BundleError
from cellforge.spec import SpecError


def _run(args) -> int:
    from cellforge.jobs import run_job

    run_job(args.job, address=args.address)
    return 0


def _validate(args) -> int:
    from cellforge.jobs import parse_job

    bad = 0
    for path in args.jobs:
        try:
            job, steps, _ = parse_job(path)
            print(f"{path}: ok ({len(steps)} step{'s' * (len(steps) != 1)}: {', '.join(k for k, _ in steps)})")
        except SpecError as e:
            print(f"{path}: {e}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellforge", description="Recurrent models on Ray: train, sweep, serve.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a job file")
    r.add_argument("job")
    r.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or an embedded local Ray)")
    r.set_defaults(fn=_run)
    v = sub.add_parser("validate", help="validate job files without running them")
    v.add_argument("jobs", nargs="+")
    v.set_defaults(fn=_validate)
    for register in EXTRA_COMMANDS:
        register(sub)
    return p


# other modules add their sub-commands here: each item is ``register(subparsers)``
EXTRA_COMMANDS: list = []


def _jobs_commands(sub) -> None:
    """``cellforge submit`` and ``cellforge jobs``: Ray jobs on a cluster (cellforge.submit)."""
    from cellforge.submit import register

    register(sub)


EXTRA_COMMANDS.append(_jobs_commands)


def _serving_commands(sub) -> None:
    """``cellforge deploy`` and ``cellforge predict`` (cellforge.serving.cli)."""
    from cellforge.serving.cli import register

    register(sub)


EXTRA_COMMANDS.append(_serving_commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (SpecError, BundleError) as e:
        print(f"cellforge: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
