"""The model behind an endpoint, without Serve: validate raw inputs, run batches, step sessions.

    >>> engine = Engine(DeployConfig(bundle=bundle, name="digits"))     # a digits classifier's bundle
    >>> x, lengths = engine.prepare(images[:2].tolist())
    >>> answer = engine.respond(engine.run([(x, lengths)])[0], lengths)
    >>> answer["labels"] == cf.load(bundle).predict(images[:2]).tolist()
    True

Numbers come from ``cellforge.model.Model`` (numpy, torch or onnx runtime) and, for sessions, from the
numpy reference's ``step`` (with runtime onnx: the single-step ONNX graph), so an endpoint answers what ``cf.load(bundle).predict`` answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError
from threadpoolctl import threadpool_limits

from cellforge.anomaly.scores import StreamStep, stream_windows
from cellforge.backends.numpy import step as reference_step
from cellforge.data import audio
from cellforge.data.preprocess import scale
from cellforge.errors import SpecError
from cellforge.model import load
from cellforge.serving import audio_session
from cellforge.serving.config import DeployConfig, version_of
from cellforge.serving.contract import MAX_ABS
from cellforge.serving.schema import ApiError, InputError, Problem
from cellforge.serving.seq2seq import Translator

# ints pass; bools, strings, NaN and values beyond MAX_ABS (the OpenAPI documents' bound) do not
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS, le=MAX_ABS)]
STEPS = TypeAdapter(list[Finite | list[Finite]])
NUMERIC = TypeAdapter(list[list[Finite | list[Finite]]])
# an explain request's cost, in sequence forward passes (integrated gradients: n_steps per input; occlusion:
# steps + 1): 1024 lets 20 inputs through at integrated gradients' default 50 steps
EXPLAIN_MAX_PASSES = 1024
MAX_PROBLEMS = 5  # a NaN-filled batch would otherwise list every value
TEXT = TypeAdapter(list[Annotated[str, Field(strict=True)]])


def _type_problems(err: ValidationError, prefix: str) -> list[Problem]:
    """Pydantic errors -> one problem per field; union branch tags dropped, the deepest path kept."""
    found: dict[str, str] = {}
    for e in err.errors():
        path = ".".join([prefix, *(str(p) for p in e["loc"] if isinstance(p, int))])
        msg = e["msg"]
        if "input" in e and not isinstance(e["input"], (list, dict)):
            msg += f" (got {e['input']!r})"
        found.setdefault(path, msg)
    deepest = [(p, m) for p, m in found.items() if not any(q.startswith(p + ".") for q in found)]
    shown = [Problem(field=p, message=m) for p, m in deepest[:MAX_PROBLEMS]]
    if len(deepest) > MAX_PROBLEMS:
        shown.append(Problem(field=prefix, message=f"... and {len(deepest) - MAX_PROBLEMS} more problems"))
    return shown


def padded(xs: list[np.ndarray]) -> np.ndarray:
    """Several requests' (n, steps, ...) arrays as one batch, zero-padded to the longest (one copy each:
    np.pad per request was 4% of a batched replica's CPU at 64 requests a batch).

    >>> padded([np.ones((1, 2, 1)), np.full((2, 1, 1), 2.0)])[:, :, 0]
    array([[1., 1.],
           [2., 0.],
           [2., 0.]])
    """
    if len(xs) == 1:
        return xs[0]
    first = xs[0]
    batch = np.zeros((sum(len(x) for x in xs), max(x.shape[1] for x in xs), *first.shape[2:]),
                     np.result_type(*xs))
    i = 0
    for x in xs:
        batch[i:i + len(x), : x.shape[1]] = x
        i += len(x)
    return batch


class Engine:
    """A loaded bundle plus the limits of one deployment."""

    def __init__(self, cfg: DeployConfig):
        self.cfg = cfg
        # BLAS / torch threads beyond a replica's CPU share only contend with its neighbours: on a
        # busy 2-core machine a 64-sequence batch took 220 ms with OpenBLAS's default, 14 ms with one
        threads = max(1, int(cfg.num_cpus))
        threadpool_limits(threads)
        if cfg.runtime == "torch":
            import torch

            torch.set_num_threads(threads)
        self.model = load(cfg.bundle, framework=cfg.runtime, verify_key=cfg.verify_key)
        if cfg.runtime == "onnx":
            self.model.net.threads = threads  # ORT's sessions are made on first use, with this many threads
        if cfg.num_gpus:  # runtime torch (DeployConfig checks)
            self.model.backend.to_cuda(self.model.net)
        self.spec, self.pre = self.model.spec, self.model.preprocessor
        self.state = self.pre.state
        self.text = self.state["input_type"] == "text"
        self.audio = self.state["input_type"] == "audio"
        self.version = version_of(cfg)
        # where the bundle came from (load() verified the manifest): GET /v1/models shows its run
        self.provenance = json.loads((Path(cfg.bundle) / "manifest.json").read_text()).get("provenance") or {}
        self.seq2seq = self.spec.task == "seq2seq"
        self.translator = Translator(self.model, cfg.max_length) if self.seq2seq else None

    # requests -> arrays ----------------------------------------------------------
    def prepare(self, inputs: list[Any], options: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Validate a predict request's ``inputs`` (and seq2seq's decoding ``options``) and
        preprocess them like the bundle does."""
        if options and not self.seq2seq:
            raise InputError([Problem(field=f, message=f"only for seq2seq models; this is a {self.spec.task} model")
                              for f in options])
        if not inputs:
            raise InputError([Problem(field="inputs", message="empty batch: send at least one input")])
        if len(inputs) > self.cfg.max_inputs:
            raise InputError([Problem(field="inputs", message=f"at most {self.cfg.max_inputs} inputs per "
                                                              f"request, got {len(inputs)}")])
        if self.seq2seq:
            return self.translator.prepare(inputs, options or {})[1:]
        if self.state["input_type"] == "audio":  # base64 audio or samples (cellforge.data.audio)
            try:
                return self.pre.transform(audio.from_request(inputs))
            except SpecError as e:
                raise InputError([Problem(field=f, message=m) for f, m in e.problems]) from None
        try:
            (TEXT if self.text else NUMERIC).validate_python(inputs)
        except ValidationError as e:
            hint = "a string per input" if self.text else "a list of steps per input"
            raise InputError(_type_problems(e, "inputs") + [Problem(field="inputs", message=f"expected {hint}")]) from None
        problems = []
        for i, seq in enumerate(inputs):
            n = len(self.pre.tokenize(seq)) if self.text else len(seq)
            if n > self.cfg.max_length:
                problems.append(Problem(field=f"inputs.{i}", message=f"{n} steps is longer than the maximum "
                                                                     f"{self.cfg.max_length}"))
            elif not self.text:
                problems += self._widths(seq, f"inputs.{i}")
        if problems:
            raise InputError(problems)
        # one-feature steps may come as bare numbers or one-value lists, mixed within a sequence
        rows = inputs if self.text else [[s if isinstance(s, list) else [s] for s in seq] for seq in inputs]
        try:
            return self.pre.transform(rows)
        except SpecError as e:
            raise InputError([Problem(field=f, message=m) for f, m in e.problems]) from None

    def _widths(self, steps: list[Any], where: str) -> list[Problem]:
        width = self.state["num_features"]
        for j, s in enumerate(steps):
            w = len(s) if isinstance(s, list) else 1
            if w != width:
                return [Problem(field=f"{where}.{j}", message=f"expected {width} feature value"
                                                              f"{'s' * (width != 1)} per step, got {w}")]
        return []

    # arrays -> answers -----------------------------------------------------------
    def run(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """One forward pass for several requests' arrays; returns each request's raw outputs
        (seq2seq: items ``(x, lengths, (strategy, width), return_attention)``, decoded rows)."""
        if self.seq2seq:
            return self.translator.run(items)
        out = self.model.outputs(padded([x for x, _ in items]), np.concatenate([n for _, n in items]))
        parts = np.split(out, np.cumsum([len(x) for x, _ in items])[:-1])
        return [p[:, : x.shape[1]] if self.spec.per_step else p for p, (x, _) in zip(parts, items)]

    def respond(self, outputs: np.ndarray, lengths: np.ndarray, texts: list[str] | None = None,
                return_attention: bool = False) -> dict[str, Any]:
        """Raw outputs -> the JSON fields of a prediction (labels + probabilities, or values;
        seq2seq: decoded rows -> texts, for the request's ``texts``)."""
        if self.seq2seq:
            return self.translator.respond(outputs, texts, lengths, return_attention)
        d = self.pre.decode(outputs, lengths)
        if "texts" in d:  # transcribe
            return {"texts": d["texts"]}
        if "values" in d:
            return {"values": np.asarray(d["values"]).tolist()}
        probs = d["probabilities"]
        probs = [np.asarray(p).tolist() for p in probs] if isinstance(probs, list) else probs.tolist()
        return {"labels": list(d["labels"]), "probabilities": probs, "classes": list(self.state["classes"])}

    # attributions -----------------------------------------------------------------
    def explain(self, inputs: list[Any], method: str, target: int | list[int] | None = None, step: int | None = None,
                n_steps: int = 50) -> dict[str, Any]:
        """Attributions for a request's raw inputs (cellforge.interpret), with the prediction."""
        from cellforge.interpret import explain, input_tokens

        x, lengths = self.prepare(inputs)
        per_input = {"integrated_gradients": n_steps, "gradient_x_input": 1, "occlusion": x.shape[1] + 1}[method]
        passes = len(x) * per_input
        if passes > EXPLAIN_MAX_PASSES:
            raise ApiError(413, "too_large", "inputs",
                           f"this request needs {passes} sequence forward passes ({len(x)} inputs x {per_input} "
                           f"for {method}); the explain limit is {EXPLAIN_MAX_PASSES} per request: send fewer "
                           "inputs (or fewer n_steps)")
        try:
            ex = explain(self.spec, self.model.weights, x, lengths, method, target=target, step=step, n_steps=n_steps)
        except ValueError as err:  # "field: message"
            field, _, message = str(err).partition(": ")
            raise InputError([Problem(field=field, message=message)]) from None
        ex.tokens = input_tokens(self.model, inputs, lengths)
        return {**ex.to_dict(), **self.respond(self.model.outputs(x, lengths), lengths)}

    # sessions ----------------------------------------------------------------------
    @property
    def streams(self) -> bool:
        return self.no_sessions is None

    @property
    def no_sessions(self) -> str | None:
        """Why this model has no sessions (None when it has)."""
        if self.seq2seq:
            return "a seq2seq model reads whole inputs; stream its output with predict's \"stream\": true"
        if self.spec.bidirectional:
            return "a bidirectional model reads whole sequences; sessions need a unidirectional one"
        if self.audio and self.state["audio"]["per_utterance"]:
            return ("input.audio.per_utterance is on: each feature is normalised by the whole clip's mean and "
                    "variance, unknown until the clip ends; send each clip to predict (sessions need a model "
                    "trained with per_utterance off)")
        return None

    def step_inputs(self, raw: list[Any] | dict[str, Any] | str, end: bool | None = None) -> np.ndarray:
        """A session step's new steps -> a (1, t, F) array (token ids (1, t) for text; an audio model's
        chunk: (1, samples)). ``end`` (given or not): for audio models only."""
        if self.audio:
            return audio_session.chunk(raw, self.state["audio"])[None]
        if end is not None:
            raise InputError([Problem(field="end", message="only for audio models (it ends a session's clip); "
                                                           f"this model's input is {self.state['input_type']}")])
        if isinstance(raw, dict):
            raise InputError([Problem(field="inputs", message="expected " + ("text (a string)" if self.text else
                                                                             "a list of steps") + ", got an object")])
        if self.text:
            if not isinstance(raw, str):
                raise InputError([Problem(field="inputs", message="expected text (a string) for a text model")])
            ids = self.pre.token_ids(raw)
            if not ids:
                raise InputError([Problem(field="inputs", message="no tokens in the text")])
            arr = np.asarray([ids], np.int64)
        else:
            if isinstance(raw, str):
                raise InputError([Problem(field="inputs", message="expected a list of steps, got a string")])
            try:
                STEPS.validate_python(raw)
            except ValidationError as e:
                raise InputError(_type_problems(e, "inputs")) from None
            if not raw:
                raise InputError([Problem(field="inputs", message="send at least one step")])
            problems = self._widths(raw, "inputs")
            if problems:
                raise InputError(problems)
            q = np.asarray([s if isinstance(s, list) else [s] for s in raw], np.float64)
            arr = scale(q, self.state["scaler"]).astype(np.float32)[None]
        if arr.shape[1] > self.cfg.max_length:
            raise InputError([Problem(field="inputs", message=f"{arr.shape[1]} steps is longer than the "
                                                              f"maximum {self.cfg.max_length}")])
        return arr

    def step(self, x: np.ndarray, state: Any, end: bool = False) -> tuple[dict[str, Any], Any]:
        """Run new steps from ``state``; the answer for each step and the state to keep.

        Step t's answer is what ``predict`` gives for the sequence's first t steps. (A forecaster's
        ``predict`` reads only the last ``window`` steps, a session everything from its start: the
        two agree while a session is at most ``window`` steps long.) An audio model's ``x`` is a chunk
        of samples, its answer the clip's so far, and ``end`` ends the clip (``serving.audio_session``).
        """
        if not self.streams:
            raise ApiError(400, "unsupported", "model", self.no_sessions)
        if self.audio:
            return audio_session.step(self, x[0], state, end)
        if self.spec.task == "anomaly":  # the state kept is the stream's last window (see anomaly.scores)
            work = self.stream_work(x, state)
            return work.answer(self.windows_outputs([work.windows])[0] if len(work.windows) else None), work.carry
        out, new_state = self.step_net(x, state)
        return self.step_answer(out), new_state

    def step_answer(self, out: np.ndarray) -> dict[str, Any]:
        """A session step's (1, t, outputs) network outputs -> one answer per new step."""
        steps = out.shape[1]
        if self.spec.task == "tag":
            d = self.respond(out, np.asarray([steps]))
            return {k: (v[0] if k != "classes" else v) for k, v in d.items()}
        return self.respond(out[0], np.full(steps, 1))

    def stream_work(self, x: np.ndarray, carry: dict[str, Any] | None) -> StreamStep:
        """An anomaly stream's step as windows to score and how to answer from their outputs
        (:func:`cellforge.anomaly.scores.stream_windows`): the server runs many streams' windows
        in one forward pass (:meth:`windows_outputs`)."""
        return stream_windows(self.state, x[0], carry)

    def windows_outputs(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """The network's outputs for several streams' windows (each (n_i, window, F)), in one forward pass."""
        xs = np.concatenate(windows)
        out = self.model.outputs(xs, np.full(len(xs), self.state["window"], np.int64))
        return np.split(out, np.cumsum([len(w) for w in windows])[:-1])

    def step_net(self, x: np.ndarray, state: list | None):
        """The numpy reference's step, or with runtime onnx the single-step ONNX graph (same state layout)."""
        if self.cfg.runtime == "onnx":
            return self.model.backend.step(self.model.net, x, state)
        return reference_step(self.spec, self.model.weights, x, state)

    # description -------------------------------------------------------------------
    def info(self, name: str) -> dict[str, Any]:
        s, st = self.spec, self.state
        inp: dict[str, Any] = {"type": s.input.type, "max_length": self.cfg.max_length,
                               "max_inputs": self.cfg.max_inputs}
        if self.text:
            inp.update(tokenizer=st["tokenizer"], vocab_size=len(st["vocab"]),
                       example=["a sentence to translate" if self.seq2seq else "a sentence to classify"])
        elif st["input_type"] == "audio":  # clips: {"wav": base64}, {"samples": [...], "sample_rate": Hz}, samples
            inp.update(audio=st["audio"], example=[{"samples": [0.0] * st["audio"]["frame_length"],
                                                    "sample_rate": st["audio"]["sample_rate"]}])
        else:
            inp.update(num_features=st["num_features"], example=[[[0.0] * st["num_features"]]])
            if st["kind"] == "series":
                inp.update(window=st["window"], columns=st["columns"])
        if self.seq2seq:
            inp["max_length"] = self.translator.max_length
            t, d = st["target"], s.decode
            out: dict[str, Any] = {"tokenizer": t["tokenizer"], "vocab_size": len(t["vocab"]),
                                   "max_length": d.max_length or t["max_length"],
                                   "decode": {"strategy": d.strategy, "beam_width": d.width}}
        else:
            out = {"classes": st["classes"]} if "classes" in st else {"vocab": st["target"]["vocab"]} if (
                s.task == "transcribe") else {
                "targets": st.get("targets", st.get("num_targets")), "horizon": st.get("horizon", 1)}
        return {"name": name, "version": self.version, "task": s.task, "framework": s.framework,
                "runtime": self.cfg.runtime, "cell": s.cell, "hidden_size": s.hidden_size,
                "num_layers": s.num_layers, "bidirectional": s.bidirectional, "sessions": self.streams,
                "input": inp, "output": out, "run_id": self.provenance.get("run_id"), "source": self.cfg.source}
