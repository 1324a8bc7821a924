"""Errors a user can act on, and the one strict base every cellforge config is built on.

Every way of building a spec, a sweep, a deployment or a job step reports its problems the same
way: one :class:`SpecError` listing every problem with its field path.

    >>> from cellforge import ModelSpec
    >>> try:
    ...     ModelSpec(task="anomalyy", cell="lstmm", hidden_size=0)
    ... except SpecError as e:
    ...     print(sorted(path for path, _ in e.problems))
    ['cell', 'hidden_size', 'task']

A check across fields raises :class:`Problems` from a pydantic validator, each problem naming its
own field; :func:`problems_of` turns any pydantic error, with those inside it, into field paths.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class SpecError(ValueError):
    """A spec, job file, config or request is invalid; ``problems`` lists (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]], what: str = "spec"):
        self.problems = problems
        self.what = what
        lines = "\n".join(f"  - {path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"invalid {what} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}")

    @classmethod
    def from_validation(cls, err: ValidationError, what: str = "spec", prefix: str = "") -> SpecError:
        return cls(problems_of(err, prefix), what)


class BundleError(ValueError):
    """A bundle is missing, incomplete, tampered with, or of an unknown format."""


class Problems(ValueError):
    """Raised by a cross-field validator: several problems, each with the field (relative to the
    model being validated) it belongs to. ``problems_of`` places them under the model's own path."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


def problems_of(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a pydantic error into (dotted field path, message with the value received)."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        path = ".".join(p for p in (prefix, loc) if p)
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, Problems):
            out += [(".".join(p for p in (path, field) if p), msg) for field, msg in inner.problems]
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] != "missing" and "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        out.append((path, msg))
    return out


class Strict(BaseModel):
    """The base of every cellforge config: unknown keys are errors, assignments are validated, and
    building one with bad values — ``Model(...)``, ``Model.parse(dict)`` — raises one SpecError
    listing every problem (never pydantic's own ValidationError)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    what: ClassVar[str] = "config"  # how SpecError names this kind of config

    def __init__(self, /, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise SpecError.from_validation(e, self.what) from None

    # only translates errors: pydantic need not call it when it validates a nested model or model_validate()
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def parse(cls, data: Any, prefix: str = ""):
        """Validate a plain mapping (or pass an instance through); raise one SpecError listing every problem."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise SpecError([(prefix, f"expected a mapping of {cls.what} fields, got {type(data).__name__}")],
                            cls.what)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError.from_validation(e, cls.what, prefix) from None
