"""``training.bucket_by_length``: the epoch's batches group sequences of similar length (each batch is
cut to its longest, so less padding runs), with every example once and the same batch count."""

import numpy as np
import pytest

from cellforge.errors import SpecError
from cellforge.spec import ModelSpec
from cellforge.train.loop import batches, bucketed

pytestmark = pytest.mark.unit


def padding(split, idx, batch_size) -> float:
    """Padded time steps over real ones, over the batches ``batches`` cuts."""
    real = padded = 0
    for x, lengths, _ in batches(split, idx, batch_size):
        real += int(lengths.sum())
        padded += x.shape[0] * x.shape[1]
    return padded / real - 1


def test_bucketed_batches_hold_every_example_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 1000, 3000)  # audio- or document-like: lengths over two orders of magnitude
    split = {"x": np.zeros((3000, 1000, 1), np.float32), "lengths": lengths, "y": np.zeros(3000, np.int64)}
    idx = rng.permutation(3000)[:2990]  # a rank's shard, not a whole number of batches
    out = bucketed(idx, lengths, 32, np.random.default_rng(1))
    assert sorted(out.tolist()) == sorted(idx.tolist())
    assert padding(split, idx, 32) > 0.5 and padding(split, out, 32) < 0.05
    # the batch order is still random: lengths do not rise through the epoch
    firsts = [int(lengths[out[i]]) for i in range(0, len(out) - 32, 32)]
    assert not (np.diff(firsts) >= 0).all()
    assert abs(np.corrcoef(np.arange(len(firsts)), firsts)[0, 1]) < 0.3
    # the short last batch stays last, so every other batch is full
    assert [len(b[1]) for b in batches(split, out, 32)][:-1] == [32] * (len(out) // 32)


def test_the_spec_field_is_off_by_default_and_typed():
    assert ModelSpec().training.bucket_by_length is False
    assert ModelSpec(training={"bucket_by_length": True}).training.bucket_by_length is True
    with pytest.raises(SpecError) as e:
        ModelSpec(training={"bucket_by_length": "sometimes"})
    assert [f for f, _ in e.value.problems] == ["training.bucket_by_length"], e.value.problems
