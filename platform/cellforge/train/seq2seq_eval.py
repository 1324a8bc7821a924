"""seq2seq metrics of a whole split over all ranks, with a worker's current weights.

Each rank takes every world-th example and computes two things: the teacher-forced statistics
(loss and token accuracy, summed over ranks like every task's) and its greedy decodings, written
into its rows of one (examples x max_length) array of token ids that an all-reduce (a sum: every
other rank's rows are zero) hands to every rank whole. Every rank then scores the same texts with
sacrebleu and rouge-score (:func:`cellforge.metrics.text_scores`), so early stopping agrees.

Validation decodes greedily, whatever ``spec.decode`` says: beam search costs ``beam_width`` times
more per epoch; the test split (``score_texts`` in ``fit``) uses the spec's own decoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellforge import decode, metrics
from cellforge.data import targets
from cellforge.spec import ModelSpec
from cellforge.train.worker import WorkerInfo

BATCH = 256  # rows decoded together; memory of (rows, steps, hidden) is small at this size


def evaluate(fitter, spec: ModelSpec, split: dict[str, np.ndarray], info: WorkerInfo,
             target: dict[str, Any]) -> dict[str, float]:
    """loss, token_accuracy, exact_match, bleu, chrf and rouge_l of ``split`` (all ranks call it)."""
    n = len(split["y"])
    max_length = spec.decode.max_length or spec.target.max_length
    idx = np.arange(info.rank, n, info.world)
    stats = np.zeros(3)
    ids = np.zeros((n, max_length), np.float64)  # token id + 1; 0 = nothing
    stepper = fitter.stepper()
    for s in range(0, len(idx), BATCH):
        b = idx[s: s + BATCH]
        lengths = split["lengths"][b]
        x, y = split["x"][b][:, : int(lengths.max())], trim(split["y"][b])
        stats += metrics.token_stats(fitter.predict(x, lengths, y), y)
        for row, d in zip(b, decode.greedy(stepper, x, lengths, max_length)):
            ids[row, : len(d.tokens)] = np.asarray(d.tokens) + 1
    total = fitter.allreduce(np.concatenate([stats, ids.ravel()]))
    stats, ids = total[:3], total[3:].reshape(n, max_length).astype(np.int64) - 1
    hyps = [targets.decode(target, row[row >= 0]) for row in ids]
    return {"loss": float(stats[0] / max(stats[1], 1)), "token_accuracy": float(stats[2] / max(stats[1], 1)),
            **metrics.text_scores(hyps, references(target, split["y"]))}


def trim(y: np.ndarray) -> np.ndarray:
    """Targets (B, T) cut to the batch's longest one (the rest of the columns are padding)."""
    real = (y != targets.IGNORE).any(0)
    return y[:, : (int(np.flatnonzero(real)[-1]) + 1 if real.any() else 1)]


def references(target: dict[str, Any], y: np.ndarray) -> list[str]:
    """The reference texts of encoded targets (as the model was taught them: cut to max_length)."""
    return [targets.decode(target, row[row != targets.IGNORE]) for row in y]


def test(spec: ModelSpec, weights: dict[str, np.ndarray], prepared) -> tuple[dict[str, float], list[dict]]:
    """The test split's ``test_*`` metrics with the final weights, decoded as ``spec.decode`` says,
    and a few predictions beside the truth (``fit``'s examples)."""
    split, target = prepared.splits["test"], prepared.preprocessor.state["target"]
    if not len(split["y"]):
        return {}, []
    runtime = decode.runtime(spec.framework)
    m, hyps, refs = score(spec, runtime, runtime.build(spec, weights), split, target)
    examples = [{"input": prepared.raw_test[i] if i < len(prepared.raw_test) else None, "prediction": h,
                 "truth": r} for i, (h, r) in enumerate(zip(hyps[:5], refs[:5]))]
    return {f"test_{k}": v for k, v in m.items()}, examples


def score(spec: ModelSpec, runtime, net, split: dict[str, np.ndarray], target: dict[str, Any]
          ) -> tuple[dict[str, float], list[str], list[str]]:
    """A split's metrics in one process (``runtime``: a :func:`cellforge.decode.runtime` module and
    its ``net``), decoded as ``spec.decode`` says; and the decoded and reference texts."""
    stats = np.zeros(3)
    for s in range(0, len(split["y"]), BATCH):
        lengths = split["lengths"][s: s + BATCH]
        x, y = split["x"][s: s + BATCH][:, : int(lengths.max())], trim(split["y"][s: s + BATCH])
        stats += metrics.token_stats(runtime.logits(net, x, lengths, targets.teacher_inputs(y)), y)
    hyps = [targets.decode(target, d.tokens) for d in decode.run(spec, runtime.Stepper(net), split["x"],
                                                                 split["lengths"])]
    refs = references(target, split["y"])
    m = {"loss": float(stats[0] / max(stats[1], 1)), "token_accuracy": float(stats[2] / max(stats[1], 1)),
         **metrics.text_scores(hyps, refs)}
    return m, hyps, refs
