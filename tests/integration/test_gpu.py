"""The CUDA training path; skipped cleanly where there is no GPU (CI never has one)."""

import numpy as np
import pytest
import torch

import cellforge as cf
from cellforge.backends import numpy_backend as ref
from cellforge.backends import torch_backend as tb

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_cuda_forward_equals_reference():
    spec = cf.ModelSpec(task="classify", cell="lstm", num_layers=2, bidirectional=True, hidden_size=32,
                        num_classes=5, input={"num_features": 4})
    params = ref.init_params(spec)
    x = np.random.default_rng(0).normal(size=(8, 12, 4)).astype(np.float32)
    lengths = np.array([12, 3, 7, 12, 1, 5, 9, 12])
    net = tb.build(spec, params).cuda()
    # cuDNN's fused kernels in float32 (TF32 off by default for RNNs)
    np.testing.assert_allclose(tb.predict(net, x, lengths), ref.forward(spec, params, x, lengths), atol=1e-4)


def test_fit_on_gpu_workers(ray_session, runs):
    spec = cf.ModelSpec(task="classify", cell="gru", hidden_size=64, training={"lr": 0.005, "epochs": 8})
    result = cf.fit(spec, cf.datasets.load("digits"), workers=1, use_gpu=True)
    assert result.metrics["test_accuracy"] >= 0.9
