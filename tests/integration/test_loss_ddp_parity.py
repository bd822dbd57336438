"""Two gloo processes under torchrun give the same loss and gradients as one process on the same global batch,
in float64; also with the trainer's gradient accumulation (features mode) on each rank.

Run by pytest (which launches ``python -m torch.distributed.run --standalone --nproc_per_node 2`` on this file),
or by hand: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/integration/test_loss_ddp_parity.py OUT.pt``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 8
CASES = {
    "clip": {"task": {"contrastive": {"loss": "clip", "gather_with_grad": True, "local_loss": False}}},
    "clip_local": {"task": {"contrastive": {"loss": "clip", "gather_with_grad": True, "local_loss": True}}},
    "siglip": {"task": {"contrastive": {"loss": "siglip"}},
               "model": {"init_logit_bias": -10.0, "init_logit_scale": 2.302585}},
}
TEXTS = ["a red square", "a blue circle", "green", "two yellow stars on a black sky", "a cat", "a dog",
         "an emoji of a smiling face", "pink"]


def make_task(case: str):
    from mmfm.config import load_experiment
    from mmfm.tasks import build_task

    data = {"model": {"name": "tiny", **CASES[case].get("model", {})}, "task": CASES[case]["task"]}
    torch.manual_seed(0)
    return build_task(load_experiment(data=data)).double()     # float64: parity up to summation order


def global_batch(task) -> dict:
    g = torch.Generator().manual_seed(1)
    tok = task.tokenizer(TEXTS)
    return {"image": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g, dtype=torch.float64), **tok}


def grads_of(task) -> dict:
    return {n: p.grad.detach().clone() for n, p in task.named_parameters() if p.grad is not None}


def accumulated(case: str, batch: dict) -> dict:
    """The trainer's accumulation on this rank's half (2 micro-batches of 2) under DDP: features mode, no_sync
    on the first micro-batch, the loss gathering every rank's features."""
    from contextlib import nullcontext

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mmfm.train.accumulate import TaskForward, accumulate_gradients

    task = make_task(case)
    ddp = DDP(TaskForward(task))
    half = GLOBAL_BATCH // 4
    micro = [{k: v[i:i + half] for k, v in batch.items()} for i in (0, half)]
    out = accumulate_gradients(ddp, task, micro, "features", lambda last: nullcontext() if last else ddp.no_sync())
    loss = out["loss"].detach().clone()
    dist.all_reduce(loss)
    return {"loss": loss / dist.get_world_size(), "grads": grads_of(task)}


def worker(out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    per = GLOBAL_BATCH // world
    results = {}
    for case in CASES:
        task = make_task(case)
        ddp = DDP(task)
        batch = {k: v[rank * per:(rank + 1) * per] for k, v in global_batch(task).items()}
        out = ddp(batch)
        out["loss"].backward()                     # DDP averages the gradients over ranks
        loss = out["loss"].detach().clone()
        dist.all_reduce(loss)
        results[case] = {"loss": loss / world, "grads": grads_of(task)}
        results[f"{case}+accum"] = accumulated(case, batch)
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_loss_and_grads_match_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    for case in CASES:
        task = make_task(case)
        ref_loss = task(global_batch(task))["loss"]
        ref_loss.backward()
        ref = grads_of(task)
        for key in (case, f"{case}+accum"):          # one pass per rank; 2 accumulated micro-batches per rank
            got = ddp[key]
            assert torch.allclose(got["loss"], ref_loss.detach(), rtol=1e-10, atol=1e-12), (key, got["loss"], ref_loss)
            assert set(got["grads"]) == set(ref), key
            assert ref["model.logit_scale"].abs() > 0
            for name, g in ref.items():
                assert torch.allclose(got["grads"][name], g, rtol=1e-8, atol=1e-10), (
                    key, name, (got["grads"][name] / g).flatten()[:3])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    worker(sys.argv[1])
