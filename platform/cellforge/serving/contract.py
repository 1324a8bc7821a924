"""Each model app's OpenAPI document, made exact: what the model accepts, every status its routes answer.

FastAPI documents the request classes of ``schema.py``, which fit every model (``inputs``: any list).
A model's own document (``/v1/models/<name>/openapi.json``) replaces their ``inputs`` with the
model's input schema — features per step, steps per sequence, sequences per request, text or
numbers — so a request the document accepts is one the server accepts (schemathesis' positive and
negative data checks, ``tests/integration/test_fuzz_serving.py``), and documents each error answer
(``ErrorBody``) instead of FastAPI's generic 422.

    >>> steps(3, 100)["items"]["minItems"], steps(3, 100)["maxItems"]
    (3, 100)
"""

from __future__ import annotations

from typing import Any

MAX_ABS = 1e15  # largest |feature value| accepted: scaled and run in float32 it stays finite (max 3.4e38)
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
REASONS = {400: "The model does not support this (e.g. sessions of a bidirectional model)",
           401: "Missing or incorrect bearer token", 404: "Unknown or expired session, or unknown model",
           409: "A conflicting step (offset mismatch, a concurrent step, a session of another version)",
           413: "The request body is too large (or an explain request costs too many forward passes)",
           422: "Invalid input: each problem names its field", 503: "The session store is unreachable; retry"}


def number() -> dict[str, Any]:
    return {"type": "number", "minimum": -MAX_ABS, "maximum": MAX_ABS}


def step(features: int) -> dict[str, Any]:
    """One time step: ``features`` numbers (or, with one feature, a bare number)."""
    row = {"type": "array", "items": number(), "minItems": features, "maxItems": features}
    return {"anyOf": [number(), row]} if features == 1 else row


def steps(features: int, max_length: int) -> dict[str, Any]:
    return {"type": "array", "items": step(features), "minItems": 1, "maxItems": max_length}


def text(tokenizer: str | None, least: int, most: int) -> dict[str, Any]:
    """A text of ``least`` to ``most`` tokens. The word tokenizer's tokens are ``\\w+`` or one other
    non-space character (``data.preprocess``): a regular expression counts them exactly.

        >>> import re
        >>> p = re.compile(text("word", 1, 3)["pattern"])
        >>> [bool(p.search(t)) for t in ("good movie!", "good bad movie!", "  ", "é")]
        [True, False, False, True]
    """
    if tokenizer == "char":
        return {"type": "string", "minLength": least, "maxLength": most}
    return {"type": "string", "pattern": rf"^\s*(?:(?:\w+|[^\w\s])\s*){{{least},{most}}}$"}


def input_schemas(engine, cfg) -> dict[str, dict[str, Any]]:
    """The ``inputs`` schema of each request body, for this model and deployment."""
    st = engine.state
    if engine.text:
        length = engine.translator.max_length if engine.seq2seq else cfg.max_length
        one, stepped = text(st.get("tokenizer"), 0, length), text(st.get("tokenizer"), 1, length)
        desc = f"Texts, at most {length} tokens each."
    elif st["input_type"] == "audio":  # clips (cellforge.data.audio.from_request)
        sr = st["audio"]["sample_rate"]
        one = clip({"type": "integer", "minimum": 1}, {"type": "number"}, 1)
        # a session's chunk (serving.audio_session.chunk): at the model's rate only, possibly empty
        stepped = clip({"type": "integer", "enum": [sr]}, number(), 0)
        desc = (f"Audio clips: mono samples at {sr} Hz, {{'samples', 'sample_rate'}} "
                "(resampled), or {'wav': base64 WAV/FLAC/OGG}.")
        chunk = (f"The clip's next chunk (it may be empty): mono samples at {sr} Hz (|sample| <= {MAX_ABS:g}), "
                 f"{{'samples', 'sample_rate': {sr}}} or {{'wav': base64 WAV/FLAC/OGG at {sr} Hz}}; a session "
                 "takes no other sample rate (a chunk resampled alone is not the clip resampled). Its steps (and "
                 "offset) count samples; \"end\": true ends the clip and answers predict's answer for it whole.")
    else:
        one = steps(st["num_features"], cfg.max_length)
        stepped = one
        desc = (f"Sequences of 1 to {cfg.max_length} steps, each step {st['num_features']} finite numbers "
                f"with |value| <= {MAX_ABS:g}" + (" (or one bare number)" if st["num_features"] == 1 else ""))
    batch = {"type": "array", "items": one, "minItems": 1, "maxItems": cfg.max_inputs,
             "description": f"{desc} At most {cfg.max_inputs} per request."}
    if engine.audio:
        step_desc = chunk
    else:
        step_desc = "New time steps: " + ("text whose tokens are the steps." if engine.text else desc + ".")
    return {"PredictRequest": batch, "ExplainRequest": batch, "StepRequest": {**stepped, "description": step_desc}}


def clip(rate: dict[str, Any], sample: dict[str, Any], least: int) -> dict[str, Any]:
    """An audio clip (or chunk) as a request carries it: samples, {samples, sample_rate} or {wav}."""
    samples = {"type": "array", "items": sample, "minItems": least}
    return {"oneOf": [samples,
                      {"type": "object", "required": ["samples"], "additionalProperties": False,
                       "properties": {"samples": samples, "sample_rate": rate}},
                      {"type": "object", "required": ["wav"], "additionalProperties": False,
                       "properties": {"wav": {"type": "string", "contentEncoding": "base64"}}}]}


def exact(doc: dict[str, Any], engine, cfg, errors: dict[str, list[int]]) -> dict[str, Any]:
    """Make a model app's generated document exact (in place): its input schemas, fields it refuses
    dropped, and the error answers of each operation (``errors``: ``"METHOD /path"`` -> statuses)."""
    schemas = doc["components"]["schemas"]
    for name, inputs in input_schemas(engine, cfg).items():
        schemas[name]["properties"]["inputs"] = inputs
    if not engine.seq2seq:  # predict's decoding fields: refused by every other task (422 naming them)
        for f in ("strategy", "beam_width", "return_attention", "stream"):
            schemas["PredictRequest"]["properties"].pop(f, None)
    if not engine.audio:  # a step's "end" ends an audio clip; other models refuse it (422 naming it)
        schemas["StepRequest"]["properties"].pop("end", None)
    if engine.spec.task != "tag":  # explain's "step" is only for tag models
        schemas["ExplainRequest"]["properties"].pop("step", None)
    width = engine.model.weights["head.bias"].shape[0] if not engine.seq2seq else None
    if width and "target" in schemas["ExplainRequest"]["properties"]:
        index = {"type": "integer", "minimum": 0, "maximum": width - 1}
        schemas["ExplainRequest"]["properties"]["target"] = {
            "anyOf": [index, {"type": "array", "items": index, "minItems": 1}, {"type": "null"}],
            "description": f"The output to explain (0 to {width - 1}), one for all inputs or one per input."}
    document_errors(doc, errors)
    return doc


def document_errors(doc: dict[str, Any], errors: dict[str, list[int]]) -> dict[str, Any]:
    """Each operation's error statuses, all answered as ``ErrorBody``; FastAPI's generic 422 goes."""
    from cellforge.serving.schema import ErrorBody

    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}), ErrorBody=body)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in errors.get(f"{method.upper()} {path}", []):
                responses[str(status)] = {"description": REASONS[status],
                                          "content": {"application/json": {"schema": ERROR_REF}}}
    return doc
