"""Gradient accumulation for the one trainer: ``accumulate_gradients`` runs the micro-batches of one optimizer
step. ``plain`` mode sums micro-batch losses; ``features`` mode (contrastive tasks) encodes every micro-batch
without grad, then re-encodes each with grad and computes the loss on the concatenation, so the step equals one
big batch (shared outputs such as ``logit_scale`` pass 1/n of their gradient per micro-batch; the live pass
replays the cached pass's RNG state, as GradCache does). ``TaskForward`` is what DDP / FSDP / torch.compile wrap.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from mmfm.config import ConfigError

__all__ = ["TaskForward", "accumulation_mode", "merge_features", "RngState", "accumulate_gradients", "to_device", "batch_len"]


class TaskForward(nn.Module):
    """What DDP / FSDP / torch.compile wrap: ``forward(batch)`` = the task's loss dict; ``features_only`` = ``encode``."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch: dict | None, features_only: bool = False, run=None):
        if run is not None:            # FSDP evaluation: ``run()`` inside the root module's forward
            return run()
        return self.task.encode(batch) if features_only else self.task(batch)


def accumulation_mode(task) -> str:
    mode = getattr(task, "accumulation_mode", None)
    if mode is None:
        mode = "features" if callable(getattr(task, "encode", None)) and callable(
            getattr(task, "compute_loss", None)) else "plain"
    if mode not in ("plain", "features"):
        raise ConfigError(f"{type(task).__name__}.accumulation_mode: {mode!r} is not 'plain' or 'features'")
    return mode


def merge_features(cached: list[dict], j: int, live: dict, micro: int) -> dict:
    """Micro-batch ``j``'s live features in place of its cached ones, the rest concatenated along dim 0.

    Outputs without a batch dimension (``logit_scale``, ``logit_bias``) enter every micro-batch's loss, whose
    gradients are summed: they pass with their value unchanged but 1/n of their gradient, so the n backward
    passes add up to the big batch's gradient once (not n times)."""
    n = len(cached)
    out = {}
    for k, v in live.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == micro:
            out[k] = torch.cat([v if i == j else c[k] for i, c in enumerate(cached)])
        elif isinstance(v, torch.Tensor) and v.requires_grad and n > 1:
            out[k] = v.detach() + (v - v.detach()) / n
        else:
            out[k] = v
    return out


class RngState:
    """The CPU (and CUDA) RNG state before a micro-batch's cached forward, replayed around its live forward so
    both draw the same dropout masks (GradCache's RandContext); the global stream goes on untouched."""

    def __init__(self, batch: dict):
        from torch.utils.checkpoint import get_device_states

        self.cpu = torch.get_rng_state()
        self.devices, self.states = get_device_states(*[v for v in batch.values() if isinstance(v, torch.Tensor)])

    @contextlib.contextmanager
    def replay(self):
        from torch.utils.checkpoint import set_device_states

        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.states)
            yield


def accumulate_gradients(model: nn.Module, task: nn.Module, micro: list[dict], mode: str,
                         no_sync=None, autocast=contextlib.nullcontext, backward=None) -> dict:
    """Forward and backward over one optimizer step's micro-batches, leaving in ``.grad`` the gradient of one
    big batch. ``features``: cache every micro-batch's features without a graph, then per micro-batch recompute
    its own (same RNG state) and back-propagate the full-batch loss; ``plain``: average the micro-batch losses.
    ``model`` is the (DDP/FSDP-wrapped) ``TaskForward``; ``no_sync(last)`` the DDP context for a micro-batch;
    ``backward(loss)`` how a loss is back-propagated (default ``loss.backward()``; fp16: through the GradScaler).
    Returns the last micro-batch's outputs (features) or the averaged scalar outputs (plain)."""
    backward = backward or torch.Tensor.backward
    n = len(micro)
    no_sync = no_sync or (lambda last: contextlib.nullcontext())
    if mode == "features" and n > 1:
        cached, rng = [], []
        with torch.no_grad(), autocast():
            for b in micro:
                rng.append(RngState(b))
                cached.append({k: (v.detach() if isinstance(v, torch.Tensor) else v)
                               for k, v in model(b, features_only=True).items()})
        size = batch_len(micro[0])
        for j, b in enumerate(micro):
            with no_sync(j == n - 1), autocast(), rng[j].replay():
                live = model(b, features_only=True)
                out = task.compute_loss(merge_features(cached, j, live, size))
            backward(out["loss"])
        return out
    logged: dict = {}
    for j, b in enumerate(micro):
        with no_sync(j == n - 1), autocast():
            out = model(b)
        backward(out["loss"] / n if n > 1 else out["loss"])
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.ndim == 0:
                logged[k] = logged.get(k, 0) + v.detach().float() / n
    return logged


def to_device(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def batch_len(batch: dict) -> int:
    """The number of samples in a dict batch (first tensor dim or list length)."""
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim >= 1:
            return v.shape[0]
        if isinstance(v, list):
            return len(v)
    return 0
