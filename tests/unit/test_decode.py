"""Greedy and beam search over each runtime's Stepper: the same tokens in numpy, torch and Keras,
batched (padded) decoding equal to decoding each input alone, and scores that agree with the
teacher-forced logits of the tokens they return."""

import numpy as np
import pytest
from test_seq2seq_parity import BACKENDS, make_spec

from cellforge import decode
from cellforge.backends.numpy import init_params
from cellforge.backends.numpy import seq2seq as ref
from cellforge.seq2seq import BOS, EOS

LENGTHS = np.array([4, 1, 3, 4, 2])


def setup(cell="gru", attention="additive", eos_bias=2.0):
    spec = make_spec(cell, 1, True, attention)
    # weights of std 1, so the outputs depend on the input (PyTorch's init makes this small net
    # repeat one token); the bias on <eos> makes rows end at different steps (found by trying)
    rng = np.random.default_rng(3)
    params = {k: rng.normal(0, 1, v.shape).astype(np.float32) for k, v in init_params(spec).items()}
    params["decoder.out.bias"][EOS] += eos_bias
    x = np.random.default_rng(1).integers(4, spec.input.vocab_size, (len(LENGTHS), int(LENGTHS.max())))
    return spec, params, x


def run(stepper, x, lengths, strategy):
    if strategy == "greedy":
        return decode.greedy(stepper, x, lengths, max_length=6, return_attention=True)
    return decode.beam(stepper, x, lengths, width=3, max_length=6, alpha=0.6, return_attention=True)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("cell,attention,eos_bias", [("gru", "additive", 2.0), ("lstm", "general", 1.0),
                                                     ("rnn", "none", 4.0)])
def test_every_runtime_decodes_the_same_tokens(cell, attention, eos_bias, strategy):
    spec, params, x = setup(cell, attention, eos_bias)
    want = run(ref.Stepper(ref.build(spec, params)), x, LENGTHS, strategy)
    assert len({len(d.tokens) for d in want}) > 1  # rows end at different steps: padding is exercised
    for fw, backend in BACKENDS.items():
        got = run(backend.Stepper(backend.build(spec, params)), x, LENGTHS, strategy)
        assert [d.tokens for d in got] == [d.tokens for d in want], fw
        np.testing.assert_allclose([d.score for d in got], [d.score for d in want], atol=1e-4, err_msg=fw)
        for g, w in zip(got, want):
            if attention == "none":
                assert g.attention is None and w.attention is None
            else:
                np.testing.assert_allclose(g.attention, w.attention, atol=1e-5, err_msg=fw)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_decoding_equals_one_input_at_a_time(strategy):
    spec, params, x = setup()
    stepper = ref.Stepper(ref.build(spec, params))
    batched = run(stepper, x, LENGTHS, strategy)
    for i, n in enumerate(LENGTHS):
        alone = run(stepper, x[i: i + 1, :n], LENGTHS[i: i + 1], strategy)[0]
        assert alone.tokens == batched[i].tokens and abs(alone.score - batched[i].score) < 1e-5
        assert alone.attention.shape == batched[i].attention.shape == (len(alone.tokens) + (
            len(alone.tokens) < 6), n)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_scores_are_the_teacher_forced_log_probabilities(strategy):
    spec, params, x = setup()
    net = ref.build(spec, params)
    for i, d in enumerate(run(ref.Stepper(net), x, LENGTHS, strategy)):
        ended = len(d.tokens) < 6
        y_in = np.array([[BOS, *d.tokens][: 6]])
        y_out = [*d.tokens, EOS][: len(y_in[0])] if ended else d.tokens
        logp = decode.log_softmax(ref.logits(net, x[i: i + 1, : LENGTHS[i]], LENGTHS[i: i + 1], y_in)[0])
        assert abs(logp[np.arange(len(y_out)), y_out].sum() - d.score) < 1e-4


def test_beam_search_finds_at_least_greedy_and_width_one_is_greedy():
    spec, params, x = setup(eos_bias=0.5)
    stepper = ref.Stepper(ref.build(spec, params))
    greedy = decode.greedy(stepper, x, LENGTHS, max_length=6)
    one = decode.beam(stepper, x, LENGTHS, width=1, max_length=6, alpha=0.0)
    assert [d.tokens for d in one] == [d.tokens for d in greedy]
    wide = decode.beam(stepper, x, LENGTHS, width=4, max_length=6, alpha=0.0)  # alpha 0: raw log-probabilities
    assert all(w.score >= g.score - 1e-9 for w, g in zip(wide, greedy))
    assert any(w.score > g.score + 1e-6 for w, g in zip(wide, greedy))


class Scripted:
    """A Stepper whose next-token log-probabilities depend on the tokens so far (a dict by prefix):
    the best output is long, and two weak ones end early."""

    A, B = EOS + 1, EOS + 2

    def __init__(self, table):
        self.table = table

    def start(self, x, lengths):
        return [()] * len(lengths)

    def select(self, state, rows):
        return [state[r] for r in rows]

    def step(self, state, tokens):
        state = [p if p and p[-1] == EOS else (*p, int(t)) for p, t in zip(state, tokens)]
        logits = np.full((len(state), self.B + 1), -30.0)
        for i, p in enumerate(state):
            for token, value in self.table.get(p[1:], {EOS: 0.0}).items():
                logits[i, token] = value
        return logits, state, None


def test_beam_search_keeps_going_while_a_better_hypothesis_is_still_being_written():
    a, b = Scripted.A, Scripted.B
    table = {(): {a: 0.0, b: -3.0}, (a,): {a: 0.0, b: -5.0}, (b,): {EOS: 0.0}, (a, b): {EOS: 0.0},
             (a, a): {a: 0.0}, (a, a, a): {a: 0.0}, (a, a, a, a): {EOS: 0.0}}
    stepper, x, lengths = Scripted(table), np.zeros((1, 1), np.int64), np.array([1])
    greedy = decode.greedy(stepper, x, lengths, max_length=10)[0]
    assert greedy.tokens == [a, a, a, a]
    for width in (1, 2, 3):  # "b" and "a b" end first, in the top 2, before "a a a a" does
        for alpha in (0.0, 1.0):
            got = decode.beam(stepper, x, lengths, width=width, max_length=10, alpha=alpha)[0]
            assert got.tokens == greedy.tokens and abs(got.score - greedy.score) < 1e-9, (width, alpha, got)


def test_length_penalty_favours_longer_outputs():
    spec, params, x = setup(eos_bias=1.0)
    stepper = ref.Stepper(ref.build(spec, params))
    short = decode.beam(stepper, x, LENGTHS, width=4, max_length=6, alpha=0.0)
    long = decode.beam(stepper, x, LENGTHS, width=4, max_length=6, alpha=2.0)
    assert sum(len(d.tokens) for d in long) >= sum(len(d.tokens) for d in short)
    assert decode.length_penalty(1, 0.0) == 1.0 and decode.length_penalty(7, 1.0) == 2.0
