"""The CUDA paths: the network on cuDNN (and our generic loop for custom cells), training on GPU
Train workers, and a GPU serving replica's engine. Skipped cleanly without a GPU (CI has none);
on a GPU machine: ``pytest -m gpu tests/integration/test_gpu.py``."""

import numpy as np
import pytest
import torch

import cellforge as cf
from cellforge.backends import numpy as ref
from cellforge.backends import torch as tb

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mgu"])
def test_cuda_forward_equals_reference(cell, user_cells):  # mgu: the generic loop
    spec = cf.ModelSpec(task="classify", cell=cell, num_layers=2, bidirectional=True, hidden_size=32,
                        num_classes=5, input={"num_features": 4})
    params = ref.init_params(spec)
    x = np.random.default_rng(0).normal(size=(8, 12, 4)).astype(np.float32)
    lengths = np.array([12, 3, 7, 12, 1, 5, 9, 12])  # padded: packed sequences on cuDNN
    net = tb.to_cuda(tb.build(spec, params))
    assert next(net.parameters()).is_cuda
    # IEEE float32 on the GPU: with PyTorch's default (cuDNN RNNs may use TF32) lstm/gru/rnn were 2e-3 off
    np.testing.assert_allclose(tb.predict(net, x, lengths), ref.forward(spec, params, x, lengths), atol=1e-5)


def test_fit_on_gpu_worker_and_serve_its_bundle_on_gpu(ray_session, runs):
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine

    spec = cf.ModelSpec(task="classify", cell="gru", hidden_size=64, training={"lr": 0.005, "epochs": 8})
    data = cf.datasets.load("digits")
    result = cf.fit(spec, data, workers=1, use_gpu=True)
    assert result.metrics["test_accuracy"] >= 0.9
    # trained on CUDA, saved canonical: the CPU reference reproduces the GPU model's outputs
    cpu = cf.load(result.bundle, framework="numpy")
    engine = Engine(DeployConfig(bundle=str(result.bundle), name="digits", num_gpus=1, runtime="torch"))
    assert next(engine.model.net.parameters()).is_cuda
    x, lengths = engine.prepare([seq.tolist() for seq in data.x[:64]])
    # logits up to ~10 in size: an H100 run measured at most 2.0e-5 apart (float32 rounding, TF32 off)
    np.testing.assert_allclose(engine.run([(x, lengths)])[0], cpu.outputs(x, lengths), atol=5e-5)
