"""PyTorch training on Ray Train workers: loss, optimizers, the per-worker ``Fitter`` that
``cellforge.train.loop`` drives, and the Ray trainer (``TorchTrainer``, DDP over gloo or NCCL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellforge.backends.network import thread_share
from cellforge.backends.torch.model import Net, from_canonical, full_float32, predict, to_canonical
from cellforge.spec import ModelSpec
from cellforge.train.worker import LRSchedule, WorkerInfo


def make_trainer(worker_fn, config: dict, scaling_config, run_config):
    """A Ray Train V2 ``TorchTrainer`` running ``worker_fn(config)`` on every worker."""
    from ray.train.torch import TorchTrainer

    return TorchTrainer(worker_fn, train_loop_config=config, scaling_config=scaling_config, run_config=run_config)


def loss_fn(spec: ModelSpec, out, y, lengths=None):
    if spec.task == "transcribe":  # CTC: blank 0, each row's loss over its target length, then the mean
        target_lengths = (y >= 0).sum(1)
        log_p = F.log_softmax(out, -1).transpose(0, 1)  # (T, N, C)
        return F.ctc_loss(log_p, y.clamp(min=0), lengths.to(torch.int64), target_lengths, blank=0,
                          reduction="mean", zero_infinity=True)
    if spec.task in ("classify", "tag"):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)
    return F.mse_loss(out, y)


def penalty(spec: ModelSpec, net) -> torch.Tensor | float:
    """L1/L2 on weight matrices (not biases), added to the loss."""
    t = spec.training
    if not (t.l1 or t.l2):
        return 0.0
    ws = [p for p in net.parameters() if p.dim() > 1]
    return t.l1 * sum(w.abs().sum() for w in ws) + t.l2 * sum((w * w).sum() for w in ws)


def make_optimizer(spec: ModelSpec, params):
    t = spec.training
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def ray_train_torch():
    """``ray.train.torch``, for a Fitter that needs its device or DDP (more than one worker, a GPU): a
    fit in the driver's process (``cellforge.train.fit.in_process``) does not import Ray Train."""
    import ray.train.torch

    return ray.train.torch


class Fitter:
    """One worker's model, optimizer and schedule; ``cellforge.train.loop`` drives it epoch by epoch."""

    def __init__(self, spec: ModelSpec, info: WorkerInfo):
        torch.set_num_threads(thread_share(info.local_world))
        torch.manual_seed(spec.training.seed)
        self.spec, self.world = spec, info.world
        rt = ray_train_torch() if info.world > 1 or info.use_gpu else None  # not imported in process
        self.device = rt.get_device() if info.use_gpu else torch.device("cpu")
        if info.use_gpu:
            full_float32()
        # prepare_model moves to the device and wraps in DDP when there is more than one worker
        self.net = rt.prepare_model(Net(spec)) if info.world > 1 or info.use_gpu else Net(spec)
        self.opt = make_optimizer(spec, self.net.parameters())
        self.lr = LRSchedule(spec)

    def gradients(self) -> dict[str, np.ndarray]:
        """Every parameter's gradient at the last step (its torch name), for TensorBoard's histograms."""
        net = self.net.module if hasattr(self.net, "module") else self.net  # DDP
        return {n: p.grad.detach().cpu().numpy() for n, p in net.named_parameters() if p.grad is not None}

    def train_epoch(self, epoch: int, batches) -> tuple[float, int]:
        """One pass over this rank's batches (x, lengths, y numpy); returns (loss sum, examples)."""
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr.value
        clip = self.spec.training.clip_norm
        total, count = torch.zeros((), dtype=torch.float64), 0
        for xb, lb, yb in batches:
            xb = torch.as_tensor(xb, device=self.device)
            yb = torch.as_tensor(yb, device=self.device)
            lb = torch.as_tensor(lb)
            out = self.net(xb, lb)
            loss = loss_fn(self.spec, out, yb, lb)
            full = loss + penalty(self.spec, self.net)
            self.opt.zero_grad(set_to_none=True)
            full.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.net.parameters(), clip)
            self.opt.step()
            total += loss.detach().double().cpu() * len(xb)
            count += len(xb)
        return float(total), count

    def predict(self, x, lengths) -> np.ndarray:
        return predict(self.net, x, lengths)

    def allreduce(self, v: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return v
        import torch.distributed as dist

        t = torch.as_tensor(v, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def get_weights(self) -> dict[str, np.ndarray]:
        return to_canonical(self.net)

    def set_weights(self, params: dict[str, np.ndarray]) -> None:
        from_canonical(self.net, params)

    def save_state(self, d: Path) -> None:
        """Optimizer and schedule state: tensors to safetensors, the rest to JSON (no pickle)."""
        from safetensors.numpy import save_file

        sd = self.opt.state_dict()
        tensors, scalars = {}, {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    tensors[f"{pid}.{k}"] = v.detach().cpu().numpy()
                else:
                    scalars[f"{pid}.{k}"] = float(v)
        save_file(tensors, str(d / "optimizer.safetensors"))
        (d / "optimizer.json").write_text(json.dumps({"scalars": scalars, "groups": sd["param_groups"],
                                                      "lr": self.lr.state()}))

    def load_state(self, d: Path) -> None:
        from safetensors.numpy import load_file

        tensors = load_file(str(d / "optimizer.safetensors"))
        meta = json.loads((d / "optimizer.json").read_text())
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = torch.from_numpy(v).to(self.device)
        for key, v in meta["scalars"].items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = torch.tensor(v)
        self.opt.load_state_dict({"state": state, "param_groups": meta["groups"]})
        self.lr.load(meta["lr"])
