"""Run a notebook top to bottom with papermill, as a Ray job's entrypoint (what
``cellforge submit NOTEBOOK -p name=value`` runs on the cluster).

    python -m cellforge.notebook_job notebooks/01_quickstart.ipynb runs/notebooks/out.ipynb -p epochs=3

Parameters are injected after the notebook's ``parameters`` cell; the executed notebook, with
its outputs, is written to the output path (a local path or any URL papermill writes, s3://...)
even when a cell fails, and cell outputs stream into the job's logs as they come.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellforge.jobs.durable import Submitted
from cellforge.log import log
from cellforge.submit import parse_pairs

# the kernel of the Python running this module: on a cluster node that is the Python with
# cellforge and Ray, whatever kernel name the notebook was saved with
KERNEL = "python3"


def main(argv: list[str] | None = None) -> int:
    import papermill

    p = argparse.ArgumentParser(prog="python -m cellforge.notebook_job")
    p.add_argument("notebook")
    p.add_argument("output")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE")
    args = p.parse_args(argv)
    params = parse_pairs(args.param, "params", as_yaml=True)
    nb = Path(args.notebook).resolve()
    job = Submitted.current()  # as a submitted job: fits default to the durable root, the output goes there
    output = args.output
    if "://" not in output:
        output = str(Path(output).expanduser())
        if job is not None:
            output = str(job.paths.output(output, Path.cwd()))
        Path(output).parent.mkdir(parents=True, exist_ok=True)
    if job is None:
        return _execute(papermill, nb, output, params)
    with job:
        rc = _execute(papermill, nb, output, params)
        job.outputs["notebook"] = {"output": job.paths.shown(output) if "://" not in output else output}
        job.failed = rc != 0
    return rc


def _execute(papermill, nb: Path, output: str, params: dict) -> int:
    log.info("executing %s with %s", nb.name, params or "its default parameters")
    try:
        papermill.execute_notebook(str(nb), output, parameters=params, kernel_name=KERNEL, cwd=str(nb.parent),
                                   progress_bar=False, stdout_file=sys.stdout,
                                   stderr_file=sys.stderr)
    except papermill.PapermillExecutionError as e:
        log.error("notebook failed in cell %s: %s: %s", e.exec_count, e.ename, e.evalue)
        log.info("executed notebook (up to the failure): %s", _shown(output))
        return 1
    log.info("executed notebook: %s", _shown(output))
    return 0


def _shown(output: str) -> str:
    return output if "://" in output else str(Path(output).resolve())


if __name__ == "__main__":
    sys.exit(main())
