"""The HTTP contract: request and response bodies (pydantic, ``extra="forbid"``) and the error shape.

Every error is one JSON object a client can act on::

    {"error": "invalid_input", "message": "invalid input (1 problem): ...",
     "problems": [{"field": "inputs.0.3", "message": "Input should be a finite number (got nan)"}]}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from cellforge.errors import Strict


class _Strict(Strict):
    what = "request"


def _integral(v: Any) -> Any:
    """3.0 -> 3 (JSON Schema's integer includes integral floats); any other value to the strict int check,
    which refuses true and "3" as JSON Schema does (pydantic's lax int would take them)."""
    if isinstance(v, list):
        return [_integral(x) for x in v]
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**53 else v


Int = Annotated[int, Field(strict=True)]  # with _integral before it: integers as JSON Schema has them


class Problem(_Strict):
    field: str
    message: str


class ErrorBody(_Strict):
    error: str  # invalid_input, unauthorized, not_found, too_large, conflict, unsupported
    message: str
    problems: list[Problem] = Field(default_factory=list)


class ApiError(Exception):
    """An HTTP error with a field to blame: ``ApiError(404, "not_found", "session_id", "unknown session 'x'")``."""

    def __init__(self, status: int, code: str, field: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.field, self.message, self.headers = status, code, field, message, headers

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.code, message=f"{self.field}: {self.message}",
                         problems=[Problem(field=self.field, message=self.message)]).model_dump()


class InputError(Exception):
    """Raw inputs that do not fit the model: 422 with every problem's field."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


SEQ2SEQ_FIELDS = ("strategy", "beam_width", "return_attention", "stream")
MAX_BEAM = 16  # a request's beam costs width x its inputs rows per decoder step

INPUTS_DOC = ("A batch of raw inputs: strings for text models; for numeric models a list of sequences, "
              "each a list of steps, each step a list of feature values (or one number when the model "
              "has one feature).")


class PredictRequest(_Strict):
    inputs: list[Any] = Field(description=INPUTS_DOC, examples=[[[0.0, 1.0], [2.0, 3.0]]])
    # seq2seq only (another task's model answers 422 naming the field)
    strategy: Literal["greedy", "beam"] | None = Field(None, description="seq2seq: decoding; default the "
                                                                         "model's spec.decode.strategy.")
    beam_width: Annotated[Int, Field(gt=0, le=MAX_BEAM)] | None = Field(None, description="seq2seq, beam: hypotheses per input.")
    return_attention: bool = Field(False, strict=True, description="seq2seq: one (output tokens x input tokens) attention "
                                                      "matrix per input, with its tokens.")
    stream: bool = Field(False, strict=True, description="seq2seq, greedy: answer with server-sent events, one per "
                                            "decoded piece of text ({\"index\", \"token\"}), then one "
                                            "with \"done\": true and the whole texts.")

    _ints = field_validator("beam_width", mode="before")(_integral)

    def decode_options(self) -> dict[str, Any]:
        """The seq2seq fields that were given (to refuse them for other tasks)."""
        return {f: getattr(self, f) for f in SEQ2SEQ_FIELDS if getattr(self, f) not in (None, False)}


class Attention(_Strict):
    input_tokens: list[str]
    output_tokens: list[str]  # the decoded tokens, <eos> when reached
    weights: list[list[float]]  # output tokens x input tokens; each row sums to 1


class PredictResponse(_Strict):
    model: str
    version: str
    task: str
    labels: list[Any] | None = None  # classify: one per input; tag: one list per input
    probabilities: list[Any] | None = None  # aligned with ``classes``
    classes: list[Any] | None = None
    values: list[Any] | None = None  # regress / forecast, in the data's own units
    texts: list[str] | None = None  # seq2seq: one decoded string per input
    attention: list[Attention] | None = None  # seq2seq with return_attention


class ExplainRequest(_Strict):
    """Attributions cost many forward passes (integrated gradients: ``n_steps`` per input; occlusion:
    one per step), so a request's cost is limited: see the 413 its answer names."""

    inputs: list[Any] = Field(description=INPUTS_DOC, examples=[[[0.0, 1.0], [2.0, 3.0]]])
    method: Literal["integrated_gradients", "gradient_x_input", "occlusion"] = "integrated_gradients"
    target: Int | list[Int] | None = Field(None, description="The output to explain: a class index (classify, "
                                                             "tag) or output index (regress, forecast), one "
                                                             "for all inputs or one per input; default the "
                                                             "predicted class / the first output.")
    step: Annotated[Int, Field(ge=0)] | None = Field(None, description="tag only: the step whose tag is explained (default "
                                                     "each input's last step).")
    n_steps: Int = Field(50, gt=0, le=500, description="integrated gradients' interpolation steps.")

    _ints = field_validator("target", "step", "n_steps", mode="before")(_integral)


class ExplainResponse(_Strict):
    model: str
    version: str
    task: str
    method: str
    target: list[int]  # per input: the explained output's index in the flattened network outputs
    output: list[float]  # the explained output (a logit, or a scaled value) per input
    attributions: list[Any]  # per input: per step x feature (numeric), or per token / per step (text, occlusion)
    baseline_output: list[float] | None = None  # integrated gradients and occlusion: the all-zero input's output
    delta: list[float] | None = None  # integrated gradients: sum of attributions - (output - baseline_output)
    tokens: list[list[str]] | None = None  # text: the tokens the attributions are for
    labels: list[Any] | None = None  # the prediction, as /predict answers it
    probabilities: list[Any] | None = None
    classes: list[Any] | None = None
    values: list[Any] | None = None


class SessionCreated(_Strict):
    session_id: str
    model: str
    version: str
    ttl_s: float  # idle time after which the session expires


class SessionDeleted(_Strict):
    session_id: str
    deleted: bool


class StepRequest(_Strict):
    inputs: list[Any] | dict[str, Any] | str = Field(
        description="New time steps: a list of steps (each a list of feature values or one number), text "
                    "whose tokens are the steps, or for an audio model the clip's next chunk (samples, "
                    "{'samples', 'sample_rate'} or {'wav': base64}; steps are samples).")
    offset: Annotated[Int, Field(ge=0)] | None = Field(None, description="Steps the session has consumed so far; when given, "
                                                      "a mismatch answers 409 instead of applying the "
                                                      "steps twice (safe retries).")
    end: bool = Field(False, strict=True, description="audio models: the clip ends with this chunk: its last "
                                                      "frames are computed (they need the clip's end) and the "
                                                      "answer is predict's for the whole clip; the session "
                                                      "then takes no more audio (409; an empty step with end "
                                                      "answers the final transcript again).")

    _ints = field_validator("offset", mode="before")(_integral)


class StepResponse(_Strict):
    session_id: str
    model: str
    version: str
    steps: int  # total steps consumed by the session
    # anomaly: each new step's score (null while the first window fills), flag, and the threshold
    scores: list[float | None] | None = None
    flags: list[bool] | None = None
    threshold: float | None = None
    labels: list[Any] | None = None  # one per new step
    probabilities: list[Any] | None = None
    classes: list[Any] | None = None
    values: list[Any] | None = None
    # audio models: the feature frames fed so far, the transcript so far (transcribe, CTC greedy), and
    # whether the clip has ended (the answer is then predict's for the whole clip)
    frames: int | None = None
    text: str | None = None
    end: bool | None = None


class ModelInfo(_Strict):
    name: str
    version: str
    task: str
    framework: str  # what it was trained in
    runtime: str  # what serves it
    cell: str
    hidden_size: int
    num_layers: int
    bidirectional: bool
    sessions: bool  # streaming sessions need a unidirectional model
    input: dict[str, Any]  # the input schema: type, num_features / vocab, max_length, window
    output: dict[str, Any]  # classes, or targets and horizon
    run_id: str | None = None  # the tracked run that made the bundle (its manifest's provenance)
    source: str | None = None  # the registry version served (models:/NAME/VERSION), if deployed from one


class ModelList(_Strict):
    models: list[ModelInfo]


def validation_problems(errors: list[dict[str, Any]]) -> list[Problem]:
    """FastAPI/pydantic errors -> problems with dotted field paths (``body.`` dropped)."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
            loc = []
        elif e.get("type") == "missing":
            msg = "field required"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        out.append(Problem(field=".".join(loc) or "body", message=msg))
    return out
