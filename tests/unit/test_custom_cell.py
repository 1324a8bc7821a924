"""A cell of your own, written once in the ops language: same outputs in numpy, torch and
tensorflow, saved by name in a bundle, and shipped by value to processes that cannot import it."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_parity import check_parity, make_spec, padded_batch

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.cells import CELLS, custom_cells

pytestmark = pytest.mark.usefixtures("user_cells")  # elman and mgu (tests/conftest.py)


@pytest.mark.parametrize("cell", ["elman", "mgu"])
@pytest.mark.parametrize("layers,bidirectional,head", [(1, False, "forecast"), (2, True, "classify"), (2, False, "tag")])
def test_custom_cell_agrees_across_frameworks(cell, layers, bidirectional, head):
    spec = make_spec(cell, layers, bidirectional, head)
    check_parity(spec, *padded_batch(spec))


def test_bundle_keeps_the_cell_name_and_needs_it_registered(tmp_path):
    spec = make_spec("mgu", 2, True, "classify")
    params = ref.init_params(spec, seed=3)
    path = bundle.save(tmp_path / "b", spec, params, {"kind": "sequences", "task": "classify"}, {})
    x, lengths = padded_batch(spec)
    want = ref.forward(spec, params, x, lengths)
    for fw in ("numpy", "torch", "tensorflow"):
        np.testing.assert_allclose(cf.load(path, framework=fw).outputs(x, lengths), want, atol=1e-5, rtol=0)
    CELLS.pop("mgu")
    with pytest.raises(cf.BundleError, match=r"cell 'mgu', which is not registered.*register_cell"):
        cf.load(path)


DEFINE = """
import cellforge as cf

def step(op, p, x, state):
    (h,) = state
    h = op.tanh(op.linear(x, p["w_ih"], p["b_ih"]) + op.linear(h, p["w_hh"]))
    return h, (h,)

cf.register_cell(cf.Cell("shipped", step, params={"w_ih": ("H", "I"), "w_hh": ("H", "H"), "b_ih": ("H",)}))
"""
# a fresh process that cannot import the defining module (Ray workers are such processes)
LOAD = textwrap.dedent("""
    import sys
    import numpy as np
    from ray import cloudpickle
    from cellforge.backends import numpy as ref
    from cellforge.cells import load_cells
    from cellforge.spec import ModelSpec
    load_cells(cloudpickle.loads(sys.stdin.buffer.read()))
    spec = ModelSpec(task="regress", cell="shipped", hidden_size=3, input={"num_features": 2})
    print(ref.forward(spec, ref.init_params(spec), np.ones((1, 4, 2), np.float32), np.array([4])).shape)
""")


def _ship(payload: bytes, tmp_path) -> str:
    out = subprocess.run([sys.executable, "-c", LOAD], input=payload, capture_output=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out.stdout.decode().strip()


def test_cell_from_a_user_module_ships_by_value(tmp_path, monkeypatch):
    from ray import cloudpickle

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "my_cells_for_shipping.py").write_text(DEFINE)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    import my_cells_for_shipping  # noqa: F401  (registers the cell on import)

    try:
        payload = cloudpickle.dumps(custom_cells())  # what train.run puts in the workers' config
    finally:
        CELLS.pop("shipped", None)
        sys.modules.pop("my_cells_for_shipping", None)
    assert b"my_cells_for_shipping" in payload  # named, but its code travels with it
    assert _ship(payload, tmp_path) == "(1, 1)"


def test_cell_from_main_ships_by_value(tmp_path):
    dump = DEFINE + textwrap.dedent("""
        import sys
        from ray import cloudpickle
        from cellforge.cells import custom_cells
        sys.stdout.buffer.write(cloudpickle.dumps(custom_cells()))
    """)
    payload = subprocess.run([sys.executable, "-c", dump], capture_output=True, cwd=tmp_path, timeout=120,
                             check=True).stdout
    assert _ship(payload, tmp_path) == "(1, 1)"
