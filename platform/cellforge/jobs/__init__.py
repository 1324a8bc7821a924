"""Job files: ``parse`` (validate a whole pipeline, resolve ``${id.output}`` references, run it)
and ``steps`` (each step kind: its fields, outputs and ``run``)."""

from cellforge.jobs.parse import Job, parse_job, run_job
from cellforge.jobs.steps import STEPS, DataRef, Step

__all__ = ["STEPS", "DataRef", "Job", "Step", "parse_job", "run_job"]
