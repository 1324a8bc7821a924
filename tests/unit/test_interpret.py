"""cellforge.interpret without Ray: the trace against the torch and Keras runtimes' hidden states,
integrated gradients' completeness on every task, occlusion against the numpy reference."""

import sys

import numpy as np
import pytest
import torch

import cellforge as cf
from cellforge.backends import get_backend
from cellforge.backends import numpy as ref
from cellforge.interpret import explain, trace

LENGTHS = np.array([6, 1, 4, 6, 3])
HEADS = {"classify": {"task": "classify", "num_classes": 4},
         "regress": {"task": "regress"},
         "forecast": {"task": "forecast", "horizon": 2, "num_outputs": 2},
         "tag": {"task": "tag", "num_classes": 3}}
TEXT = {"type": "text", "vocab_size": 30, "embedding_dim": 4}


def spec_of(cell="lstm", layers=1, bidirectional=False, head="classify", inp=None):
    return cf.ModelSpec(cell=cell, num_layers=layers, bidirectional=bidirectional, hidden_size=7,
                        input=inp or {"num_features": 5}, **HEADS[head])


def batch(spec, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    steps = int(lengths.max())
    if spec.input.type == "text":
        x = rng.integers(2, spec.input.vocab_size, (len(lengths), steps))
        x[np.arange(steps)[None, :] >= lengths[:, None]] = 0
        return x, lengths
    x = rng.normal(size=(len(lengths), steps, spec.input.num_features)).astype(np.float32)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


def runtime_hidden(framework, spec, params, layer, x, lengths):
    """Layer ``layer``'s outputs in a runtime: the top layer of the same network cut after it."""
    cut = spec.updated(num_layers=layer + 1)
    keep = {k: v for k, v in params.items() if not k.startswith("rnn.") or int(k.split(".")[1]) <= layer}
    net = get_backend(framework).build(cut, keep)
    if framework == "torch":
        with torch.no_grad():
            return net.encode(torch.as_tensor(x), torch.as_tensor(lengths))[0].numpy()
    return net.encode(x, lengths)[0].numpy()


def check_trace(spec, x, lengths):
    params = ref.init_params(spec, seed=3)
    t = trace(spec, params, x, lengths)
    np.testing.assert_allclose(t.outputs, ref.forward(spec, params, x, lengths), atol=1e-6)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    for layer in range(spec.num_layers):
        ours = t.hidden(layer)
        assert np.isnan(ours[~valid]).all()
        for fw in ("torch", "tensorflow"):
            theirs = runtime_hidden(fw, spec, params, layer, x, lengths)
            np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-5, rtol=0, err_msg=f"{fw} layer {layer}")
    return t


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_trace_hidden_states_equal_torch_and_keras_at_every_step(cell, bidirectional):
    spec = spec_of(cell, 2, bidirectional, "tag")
    check_trace(spec, *batch(spec))


def test_trace_text_input():
    spec = spec_of("gru", 1, True, "classify", TEXT)
    check_trace(spec, *batch(spec))


def test_lstm_gates_are_the_named_values_that_make_its_states():
    spec = spec_of("lstm", 1, False, "regress")
    x, lengths = batch(spec, np.array([6, 6]))
    v = trace(spec, ref.init_params(spec), x, lengths).layers["rnn.0.fwd"]
    assert {"i", "f", "g", "o", "c", "h"} <= set(v)
    c_prev = np.concatenate([np.zeros_like(v["c"][:, :1]), v["c"][:, :-1]], 1)
    np.testing.assert_allclose(v["c"], v["f"] * c_prev + v["i"] * v["g"], atol=1e-6)
    np.testing.assert_allclose(v["h"], v["o"] * np.tanh(v["c"]), atol=1e-6)
    assert ((v["f"] > 0) & (v["f"] < 1)).all()


def test_custom_cell_shows_its_own_values_by_name(user_cells):
    spec = spec_of("mgu", 2, True, "classify")
    t = check_trace(spec, *batch(spec))  # the runtimes' generic per-step loops
    v = t.layers["rnn.1.bwd"]
    assert {"f", "candidate", "h"} <= set(v)
    # the backward direction, in input order: step t's previous state is step t+1's
    h, f, cand = v["h"][0], v["f"][0], v["candidate"][0]
    h_prev = np.concatenate([h[1:], np.zeros_like(h[:1])])
    np.testing.assert_allclose(h, (1 - f) * h_prev + f * cand, atol=1e-6)


def test_recording_is_off_outside_a_trace():
    before = sys.getprofile()
    spec = spec_of("gru")
    trace(spec, ref.init_params(spec), *batch(spec))
    assert sys.getprofile() is before


CASES = [(head, inp) for head in HEADS for inp in (None, TEXT) if not (head == "forecast" and inp)]  # forecast: numbers only


@pytest.mark.parametrize("head,inp", CASES, ids=[f"{h}-{'text' if i else 'numbers'}" for h, i in CASES])
def test_integrated_gradients_completeness_on_every_task(head, inp):
    spec = spec_of("lstm", 2, True, head, inp)
    x, lengths = batch(spec)
    params = ref.init_params(spec, seed=1)
    ex = explain(spec, params, x, lengths, "integrated_gradients")
    per_seq = ex.per_step.sum(1)
    gap = ex.output - ex.baseline_output
    # the explained output is the network's own (numpy reference) output
    out = ref.forward(spec, params, x, lengths).reshape(len(x), -1)
    np.testing.assert_allclose(ex.output, out[np.arange(len(x)), ex.target], atol=1e-5)
    np.testing.assert_allclose(per_seq, gap, rtol=0.01, atol=1e-5)
    np.testing.assert_allclose(ex.delta, per_seq - gap, atol=1e-5)
    expected = (len(x), x.shape[1]) if inp else x.shape
    assert ex.attributions.shape == expected
    assert (ex.per_step[np.arange(x.shape[1])[None, :] >= lengths[:, None]] == 0).all()


@pytest.mark.parametrize("inp", [None, TEXT])
def test_occlusion_per_step_matches_the_numpy_reference(inp):
    spec = spec_of("gru", 1, False, "classify", inp)
    x, lengths = batch(spec)
    params = ref.init_params(spec, seed=2)
    ex = explain(spec, params, x, lengths, "occlusion")
    rows = np.arange(len(x))
    full = ref.forward(spec, params, x, lengths)[rows, ex.target]
    emb = params["embedding.weight"][x] if inp else x
    numeric = spec.updated(**{"input.type": "numeric", "input.num_features": emb.shape[-1], "input.vocab_size": None})
    rest = {k: v for k, v in params.items() if k != "embedding.weight"}
    for t in range(x.shape[1]):
        hidden = emb.copy()
        hidden[:, t] = 0.0
        want = full - ref.forward(numeric, rest, hidden, lengths)[rows, ex.target]
        np.testing.assert_allclose(ex.per_step[:, t], np.where(t < lengths, want, 0.0), atol=1e-5)


def test_gradient_x_input_is_the_gradient_times_the_input():
    spec = spec_of("rnn", 1, False, "regress")
    x, lengths = batch(spec)
    params = ref.init_params(spec)
    ex = explain(spec, params, x, lengths, "gradient_x_input")
    net = get_backend("torch").build(spec, params)
    xt = torch.as_tensor(x).requires_grad_()
    net(xt, torch.as_tensor(lengths))[:, 0].sum().backward()
    np.testing.assert_allclose(ex.attributions, (xt.grad * xt).detach().numpy(), atol=1e-6)


def test_tag_explains_one_step_and_bad_arguments_name_the_field():
    spec = spec_of("gru", 1, False, "tag")
    x, lengths = batch(spec)
    params = ref.init_params(spec)
    ex = explain(spec, params, x, lengths, step=0, target=1)
    assert ex.target == [1] * len(x)
    # a step's tag depends only on the steps before it (unidirectional): later attributions are zero
    assert np.abs(ex.attributions[:, 1:]).max() == 0
    with pytest.raises(ValueError, match="method: unknown 'shap'"):
        explain(spec, params, x, lengths, "shap")
    with pytest.raises(ValueError, match="target: class index 3 out of range"):
        explain(spec, params, x, lengths, target=3)
    with pytest.raises(ValueError, match="step: expected 0 <= step"):
        explain(spec, params, x, lengths, step=5)
    with pytest.raises(ValueError, match="step: only for task 'tag'"):
        explain(spec_of("gru"), ref.init_params(spec_of("gru")), x, lengths, step=1)


# plots ------------------------------------------------------------------------------------------
@pytest.fixture
def text_model(tmp_path):
    from cellforge import bundle
    from cellforge.data.preprocess import prepare

    data = cf.Sequences(["good movie", "bad plot", "the movie was good", "bad"], ["pos", "neg", "pos", "neg"])
    spec, prepared = prepare(cf.ModelSpec(task="classify", cell="lstm", hidden_size=6, input={"type": "text"}), data)
    return cf.load(bundle.save(tmp_path / "b", spec, ref.init_params(spec), prepared.preprocessor.state, {}))


def test_model_explain_and_trace_take_raw_text_and_plot(text_model):
    import matplotlib

    matplotlib.use("Agg")
    ex = text_model.explain(["the movie was good", "bad"])
    assert ex.tokens == [["the", "movie", "was", "good"], ["bad"]]
    assert ex.attributions.shape == (2, 4) and ex.prediction["labels"] in (["pos", "pos"], ["pos", "neg"],
                                                                              ["neg", "pos"], ["neg", "neg"])
    fig = ex.plot(0)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ex.tokens[0]
    assert "prediction:" in "".join(t.get_text() for a in fig.axes for t in a.texts)
    t = text_model.trace(["the movie was good", "bad"])
    assert t.tokens == ex.tokens and t.prediction["labels"] == ex.prediction["labels"]
    fig = cf.plot.states(t)
    assert len(fig.axes) == 2 and len(fig.axes[1].patches) == 3  # one bar per LSTM gate (i, f, o)
    sat = cf.interpret.plots.saturation(t)["rnn.0.fwd"]
    f = t.layers["rnn.0.fwd"]["f"]
    f = f[~np.isnan(f)]
    assert sat["f"] == pytest.approx(((f < 0.1) | (f > 0.9)).mean())


def test_attention_map_is_the_reference_decoders_attention(tmp_path):
    import matplotlib

    from cellforge import bundle
    from cellforge.backends.numpy import seq2seq as ref_s2s
    from cellforge.data.preprocess import prepare

    matplotlib.use("Agg")
    data = cf.datasets.load("numbers", low=0, high=50)
    spec = cf.ModelSpec(task="seq2seq", cell="gru", hidden_size=8, input={"type": "text", "tokenizer": "char"},
                        target={"tokenizer": "word", "max_length": 6})
    spec, prepared = prepare(spec, data)
    # the numpy runtime: it holds a seq2seq bundle's weights as they are (Model.predict of seq2seq is not ours)
    model = cf.load(bundle.save(tmp_path / "s", spec, ref.init_params(spec, 5), prepared.preprocessor.state, {}),
                    framework="numpy")
    m = cf.interpret.plots.attention(model, "twenty-one")
    assert m.inputs == list("twenty-one") and m.weights.shape == (len(m.outputs), len(m.inputs))
    np.testing.assert_allclose(m.weights.sum(1), 1.0, atol=1e-6)
    # the same weights when the reference decoder is fed the decoded tokens (teacher forcing)
    x, lengths = model.preprocessor.transform(["twenty-one"])
    vocab = {w: i for i, w in enumerate(prepared.preprocessor.state["target"]["vocab"])}
    y_in = np.array([[2] + [vocab[w] for w in m.outputs[:-1]]])
    _, weights = ref_s2s.logits(ref_s2s.build(spec, model.weights), x, lengths, y_in, return_attention=True)
    np.testing.assert_allclose(m.weights, weights[0], atol=1e-6)
    fig = cf.plot.attention(model, "twenty-one")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == m.outputs
    with pytest.raises(ValueError, match="attention: needs a seq2seq model"):
        cf.interpret.plots.attention(_classify(tmp_path), "x")


def _classify(tmp_path):
    from cellforge import bundle

    spec = spec_of("gru")
    return cf.load(bundle.save(tmp_path / "c", spec, ref.init_params(spec),
                               {"kind": "sequences", "task": "classify", "input_type": "numeric",
                                "num_features": 5, "scaler": {"shift": [0.0] * 5, "scale": [1.0] * 5}}, {}))


# the endpoint's engine, without Serve -----------------------------------------------------------
def test_engine_explain_equals_model_explain_and_limits_the_cost(text_model):
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import EXPLAIN_MAX_PASSES, Engine
    from cellforge.serving.schema import ApiError, ExplainRequest, InputError

    engine = Engine(DeployConfig(bundle=str(text_model.path), name="m", runtime="numpy"))
    texts = ["the movie was good", "bad plot"]
    out = engine.explain(texts, "integrated_gradients")
    local = text_model.explain(texts)
    assert out["tokens"] == local.tokens and out["labels"] == local.prediction["labels"]
    for got, want, n in zip(out["attributions"], local.attributions, local.lengths):
        np.testing.assert_allclose(got, want[:n], atol=1e-6)
    occ = engine.explain(texts, "occlusion")
    assert "delta" not in occ and len(occ["baseline_output"]) == 2
    with pytest.raises(ApiError, match=f"the explain limit is {EXPLAIN_MAX_PASSES} per request") as e:
        engine.explain(texts * 11, "integrated_gradients")  # 22 inputs x 50 steps
    assert e.value.status == 413 and e.value.field == "inputs"
    with pytest.raises(InputError, match="target: class index 7 out of range"):
        engine.explain(texts, "occlusion", target=7)
    assert ExplainRequest(inputs=texts).method == "integrated_gradients"
    with pytest.raises(cf.SpecError, match="method"):
        ExplainRequest(inputs=texts, method="shap")


def test_a_keras_trained_network_is_explained_through_its_canonical_weights():
    spec = spec_of("gru", 1, True, "classify").updated(framework="tensorflow")
    x, lengths = batch(spec)
    keras = get_backend("tensorflow")
    net = keras.build(spec)
    rng = np.random.default_rng(4)
    for v in net.weights:
        v.assign(rng.uniform(-0.5, 0.5, tuple(v.shape)).astype(np.float32))
    ex = explain(spec, keras.to_canonical(net), x, lengths)
    want = keras.predict(net, x, lengths)
    np.testing.assert_allclose(ex.output, want[np.arange(len(x)), want.argmax(-1)], atol=1e-5)
    np.testing.assert_allclose(ex.per_step.sum(1), ex.output - ex.baseline_output, rtol=0.01, atol=1e-5)


def test_model_explain_takes_a_raw_baseline(text_model):
    texts = ["the movie was good", "bad plot"]
    ex = text_model.explain(texts, baseline=["bad bad bad bad", "good movie"])
    want = text_model.outputs(*text_model.preprocessor.transform(["bad bad bad bad", "good movie"]))
    np.testing.assert_allclose(ex.baseline_output, want[np.arange(2), ex.target], atol=1e-5)
    np.testing.assert_allclose(ex.per_step.sum(1), ex.output - ex.baseline_output, rtol=0.01, atol=1e-5)
    with pytest.raises(ValueError, match="baseline: expected one per input with the same lengths"):
        text_model.explain(texts, baseline=["bad", "good movie"])
