"""Keras 3 training on Ray Train workers: a compiled train step, torch-like optimizers, and
gradient all-reduce across workers.

Why not ``TensorflowTrainer`` + ``MultiWorkerMirroredStrategy``: Keras 3 ``model.fit`` under
that strategy fails on 2+ workers (ray-project/ray#47464, keras-team/keras#20585). Instead Ray's
``TorchTrainer`` only launches the workers and a gloo process group; each worker computes its
Keras gradients in a ``tf.function``, the flattened gradients are summed with
``torch.distributed.all_reduce`` (CPU, zero-copy numpy views) and every worker applies the same
averaged update — so replicas stay identical, as with PyTorch DDP.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cellforge.backends.keras.model import Net, from_canonical, predict, to_canonical
from cellforge.backends.network import thread_share
from cellforge.spec import ModelSpec
from cellforge.train.worker import LRSchedule, WorkerInfo


AHEAD = 8  # batches made tensors together (see Fitter.train_epoch)


def make_trainer(worker_fn, config: dict, scaling_config, run_config):
    """A Ray Train V2 trainer for framework 'tensorflow' (see the module docstring for why torch's)."""
    from ray.train.torch import TorchConfig, TorchTrainer

    # gloo: gradients are all-reduced as CPU arrays, also when TensorFlow computes them on a GPU
    return TorchTrainer(worker_fn, train_loop_config=config, scaling_config=scaling_config,
                        run_config=run_config, torch_config=TorchConfig(backend="gloo"))


def loss_fn(spec: ModelSpec, out, y, lengths=None):
    """The torch backend's loss_fn: cross-entropy (mean over labels that are not -100), CTC or MSE."""
    if spec.task == "transcribe":  # Keras' CTC loss (per row), over the target length, then the mean
        target_lengths = tf.reduce_sum(tf.cast(y >= 0, tf.int32), 1)
        per_row = keras.ops.ctc_loss(tf.maximum(y, 0), out, target_lengths, tf.cast(lengths, tf.int32), mask_index=0)
        per_row = per_row / tf.cast(tf.maximum(target_lengths, 1), out.dtype)
        per_row = tf.where(tf.math.is_finite(per_row), per_row, tf.zeros_like(per_row))  # torch's zero_infinity
        return tf.reduce_mean(per_row)
    if spec.task in ("classify", "tag"):
        y = tf.reshape(y, [-1])
        valid = tf.cast(y != -100, out.dtype)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(y == -100, tf.zeros_like(y), y), logits=tf.reshape(out, [-1, tf.shape(out)[-1]]))
        return tf.reduce_sum(ce * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
    return tf.reduce_mean(tf.square(out - y))


class TorchAdam(keras.optimizers.Adam):
    """Keras' Adam with PyTorch's update: eps is added to the bias-corrected sqrt(v)."""

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype
        lr, g, t = ops.cast(learning_rate, dt), ops.cast(gradient, dt), ops.cast(self.iterations + 1, dt)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, (g - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(g) - v) * (1 - self.beta_2))
        bc1, bc2 = 1 - ops.power(ops.cast(self.beta_1, dt), t), 1 - ops.power(ops.cast(self.beta_2, dt), t)
        self.assign_sub(variable, lr / bc1 * m / (ops.sqrt(v) / ops.sqrt(bc2) + self.epsilon))


class TorchRMSprop(keras.optimizers.RMSprop):
    """PyTorch's RMSprop: eps outside the square root; momentum buffers the scaled gradient."""

    def update_step(self, gradient, variable, learning_rate):
        lr, g = ops.cast(learning_rate, variable.dtype), ops.cast(gradient, variable.dtype)
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(v, self.rho * v + (1 - self.rho) * ops.square(g))
        step = g / (ops.sqrt(v) + self.epsilon)
        if self.momentum > 0:
            buf = self._momentums[self._get_variable_index(variable)]
            self.assign(buf, self.momentum * buf + step)
            step = buf
        self.assign_sub(variable, lr * step)


class TorchSGD(keras.optimizers.SGD):
    """PyTorch's SGD: the momentum buffer holds gradients, the learning rate applies after it."""

    def update_step(self, gradient, variable, learning_rate):
        lr, g = ops.cast(learning_rate, variable.dtype), ops.cast(gradient, variable.dtype)
        if self.momentum != 0:
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, self.momentum * buf + g)
            g = buf
        self.assign_sub(variable, lr * g)


def make_optimizer(spec: ModelSpec) -> keras.optimizers.Optimizer:
    """Keras optimizers with PyTorch's update rules and defaults (eps 1e-8, RMSprop alpha 0.99);
    weight decay is added to the gradient by the Fitter, as torch's Adam/SGD/RMSprop do."""
    t = spec.training
    if t.optimizer == "adam":
        return TorchAdam(t.lr, epsilon=1e-8)
    if t.optimizer == "rmsprop":
        return TorchRMSprop(t.lr, rho=0.99, momentum=t.momentum, epsilon=1e-8)
    return TorchSGD(t.lr, momentum=t.momentum)


def _dist():
    import torch.distributed as dist

    return dist


class Fitter:
    """One worker's Keras model, optimizer and schedule; ``cellforge.train.loop`` drives it."""

    def __init__(self, spec: ModelSpec, info: WorkerInfo):
        try:  # share the node's cores between its workers (before TF's runtime starts)
            tf.config.threading.set_intra_op_parallelism_threads(thread_share(info.local_world))
        except RuntimeError:
            pass
        keras.utils.set_random_seed(spec.training.seed)
        self.spec, self.world = spec, info.world
        self.net = self.make_net(spec)
        self.vars = list(self.net.trainable_variables)
        # L1/L2 on weight matrices, not biases (Keras' GRU keeps its two biases in one matrix)
        self.penalized = [v for v in self.vars if len(v.shape) > 1 and "bias" not in v.path]
        self.opt = make_optimizer(spec)
        self.opt.build(self.vars)
        self.lr = LRSchedule(spec)
        self._fns: dict = {}  # compiled steps, by kind of batch (see _compiled)
        self._traced: list = []
        if self.world > 1:  # start every replica from rank 0's weights
            flat = self._flat([v.value for v in self.vars]).numpy()
            _dist().broadcast(_torch(flat), src=0)
            self._assign_flat(flat)

    def make_net(self, spec: ModelSpec):
        """The network trained (seq2seq's Fitter makes its encoder-decoder)."""
        return Net(spec)

    # compiled pieces ------------------------------------------------------------------
    def _flat(self, tensors):
        return tf.concat([tf.reshape(tf.convert_to_tensor(t), [-1]) for t in tensors], 0)

    def _assign_flat(self, flat: np.ndarray) -> None:
        s = 0
        for v in self.vars:
            n = int(np.prod(v.shape))
            v.assign(flat[s: s + n].reshape(v.shape))
            s += n

    def _grads(self, x, lengths, y, full):
        t = self.spec.training
        with tf.GradientTape() as tape:
            loss = loss_fn(self.spec, self.net(x, lengths, training=True, full=full), y, lengths)
            total = loss
            if t.l1:
                total += t.l1 * tf.add_n([tf.reduce_sum(tf.abs(w)) for w in self.penalized])
            if t.l2:
                total += t.l2 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.penalized])
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(total, self.vars)]

    def _apply(self, grads):
        t = self.spec.training
        if t.clip_norm:  # torch.nn.utils.clip_grad_norm_
            coef = tf.minimum(t.clip_norm / (tf.linalg.global_norm(grads) + 1e-6), 1.0)
            grads = [g * coef for g in grads]
        if t.weight_decay:  # torch's (coupled) weight decay: grad += wd * w
            grads = [g + t.weight_decay * v for g, v in zip(grads, self.vars)]
        self.opt.apply(grads, self.vars)

    def _step(self, x, lengths, y, full):
        """world 1: one compiled step; world > 1: gradients out flat, all-reduce, then apply."""
        loss, grads = self._grads(x, lengths, y, full)
        if self.world == 1:
            self._apply(grads)
            return loss
        return loss, self._flat(grads)

    def _apply_flat(self, flat):
        sizes = [int(np.prod(v.shape)) for v in self.vars]
        self._apply([tf.reshape(g, v.shape) for g, v in zip(tf.split(flat, sizes), self.vars)])

    def _compiled(self, xb, yb, full: bool):
        key = (full, xb.dtype.name, xb.ndim, yb.dtype.name, yb.ndim)
        if key not in self._fns:
            sig = [tf.TensorSpec([None] * xb.ndim, tf.as_dtype(xb.dtype)), tf.TensorSpec([None], tf.int64),
                   tf.TensorSpec([None] * yb.ndim, tf.as_dtype(yb.dtype))]
            self._fns[key] = self._concrete(lambda x, lengths, y: self._step(x, lengths, y, full), sig)
        return self._fns[key]

    def _concrete(self, fn, sig):
        """``fn`` compiled for ``sig``, as its concrete function, called with tensors of exactly those
        dtypes (``train_epoch`` converts each numpy batch itself). That skips tf.function's argument
        binding and its own numpy conversion: ~0.3 ms of Python a call on 2 cores; an LSTM epoch (h=128,
        T=50, batch 64) went from 0.94-0.96x Keras' ``fit`` on the same model to 0.98x."""
        function = tf.function(fn, input_signature=sig)
        self._traced.append(function)  # alive as long as the Fitter, beside its concrete function
        return function.get_concrete_function()

    # the Fitter contract (see cellforge.train.loop) -------------------------------------------------
    def gradients(self) -> dict[str, np.ndarray]:
        """None kept: the compiled step applies its gradients inside the graph, and keeping a copy
        would cost one per step (TensorBoard shows Keras runs' weights, not their gradients)."""
        return {}

    def train_epoch(self, epoch: int, batches) -> tuple[float, int]:
        """One pass over this rank's batches (x, lengths, y numpy); returns (loss sum, examples).

        Batches become tensors ``AHEAD`` at a time, before their steps run: converting each one right
        before its step left an LSTM epoch (h=128, T=50, batch 64, 2 cores) 3-4% slower. Alone, the
        three conversions take ~50 us; between two steps, ~0.6 ms (likely TensorFlow's threads, still
        spinning after the step, holding both cores). A stopped run ends within ``AHEAD`` batches."""
        self.opt.learning_rate = self.lr.value
        losses, sizes = [], []
        batches = iter(batches)
        while ready := [self._ready(*batch) for batch in itertools.islice(batches, AHEAD)]:
            for step, args in ready:
                out = step(*args)
                if self.world > 1:
                    out = self._all_reduced(out)
                losses.append(out)
                sizes.append(int(args[0].shape[0]))
        if not losses:
            return 0.0, 0
        return float(np.dot([float(v) for v in losses], sizes)), int(sum(sizes))

    def _ready(self, xb, lb, yb):
        """A batch's compiled step, and the batch as the tensors it takes."""
        lb = np.asarray(lb, np.int64)
        step = self._compiled(xb, yb, bool((lb == xb.shape[1]).all()))
        return step, (tf.convert_to_tensor(xb), tf.convert_to_tensor(lb), tf.convert_to_tensor(yb))

    def _all_reduced(self, out):
        """World > 1: sum the step's flat gradients over the workers, apply their mean; the loss."""
        loss, flat = out
        g = _torch(flat.numpy())
        _dist().all_reduce(g)
        if "apply" not in self._fns:
            self._fns["apply"] = self._concrete(self._apply_flat, [tf.TensorSpec([None], tf.float32)])
        self._fns["apply"](tf.convert_to_tensor(g.numpy() / self.world))
        return loss

    def predict(self, x, lengths) -> np.ndarray:
        return predict(self.net, x, lengths)

    def allreduce(self, v: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return v
        t = _torch(np.asarray(v, np.float64))
        _dist().all_reduce(t)
        return t.numpy()

    def get_weights(self) -> dict[str, np.ndarray]:
        return to_canonical(self.net)

    def set_weights(self, params: dict[str, np.ndarray]) -> None:
        from_canonical(self.net, params)

    def save_state(self, d: Path) -> None:
        """Optimizer slots to safetensors (by position), schedule to JSON — no pickle."""
        from safetensors.numpy import save_file

        save_file({str(i): np.atleast_1d(v.numpy()) for i, v in enumerate(self.opt.variables)},
                  str(d / "optimizer.safetensors"))
        (d / "optimizer.json").write_text(json.dumps({"paths": [v.path for v in self.opt.variables],
                                                      "lr": self.lr.state()}))

    def load_state(self, d: Path) -> None:
        from safetensors.numpy import load_file

        tensors = load_file(str(d / "optimizer.safetensors"))
        meta = json.loads((d / "optimizer.json").read_text())
        if len(meta["paths"]) != len(self.opt.variables):
            raise ValueError(f"checkpoint {d}: optimizer state has {len(meta['paths'])} slots, this model's "
                             f"optimizer {len(self.opt.variables)} — was it written for another spec?")
        for i, v in enumerate(self.opt.variables):
            v.assign(tensors[str(i)].reshape(v.shape))
        self.lr.load(meta["lr"])


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))
