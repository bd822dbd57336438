"""train.strategy: fsdp under torchrun with 2 gloo processes on the CPU: step 1's loss and gradients equal DDP's
(float64), each rank holds about half of DDP's parameter + optimizer bytes, a run killed with SIGKILL resumes
exactly from its sharded checkpoint (the steps it trains again give the same losses), evaluation with uneven
work per rank, and mmfm.load / consolidate_checkpoint read the sharded run in one process."""
import json
import textwrap

import pytest
import torch

from train_helpers import PY, make_shards, max_diff, run, write_config

STEP1 = textwrap.dedent("""
    import sys, torch
    from mmfm.config import apply_overrides, from_dict, ExperimentConfig, read_yaml
    from mmfm.train import distributed as D
    from mmfm.train.builder import build_run
    from mmfm.train.trainer import Trainer
    def local_bytes(params, optimizer):    # bytes this rank holds of the parameters and optimizer state (local shards)
        def size(t):
            t = t.to_local() if hasattr(t, "to_local") else t
            return t.numel() * t.element_size()
        return {"params": sum(size(p) for p in params),
                "optimizer": sum(size(v) for s in optimizer.state.values() for v in s.values()
                                 if isinstance(v, torch.Tensor) and v.ndim > 0)}
    info = D.init_distributed()
    for strategy in ("ddp", "fsdp"):       # one process group, both strategies from the same initial weights
        cfg = from_dict(ExperimentConfig, apply_overrides(read_yaml(sys.argv[1]), [f"train.strategy={strategy}",
                                                          f"train.output_dir={sys.argv[2]}/{strategy}"]))
        run = build_run(cfg, info.rank, info.world_size)
        task = run.task.double()
        trainer = Trainer(cfg, task, run.train)
        batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                 for k, v in next(iter(run.train)).items()}
        out = trainer.forward_backward([batch])
        grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                 for n, p in task.model.named_parameters() if p.grad is not None}
        trainer.optimizer.step()
        torch.save({"loss": out["loss"].item(), "grads": grads,
                    "bytes": local_bytes(trainer._params, trainer.optimizer)},
                   f"{sys.argv[2]}/{strategy}.{info.rank}.pt")
    D.cleanup()
""")

KILLER = textwrap.dedent("""
    import os, signal, sys
    from mmfm.config import load_experiment
    from mmfm.train import distributed as D
    from mmfm.train.builder import build_run
    from mmfm.train.trainer import Trainer
    cfg = load_experiment(sys.argv[1])
    info = D.init_distributed()
    run = build_run(cfg, info.rank, info.world_size)
    def kill(task, step):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        return {}
    Trainer(cfg, run.task, run.train, run.val, [kill]).fit()
""")


def torchrun_script(tmp_path, name: str, script: str, *args: str):
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    return run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path), *args],
               timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fsdp_step_one_equals_ddp_in_float64_with_half_the_memory(tmp_path):
    shards = make_shards(tmp_path / "shards", 8, 4)
    cfg = write_config(tmp_path / "step1.yaml", shards, tmp_path / "unused", data={"batch_size": 4},
                       train_cfg={"max_steps": 1, "grad_clip": None})
    proc = torchrun_script(tmp_path, "step1", STEP1, str(cfg), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {s: [torch.load(tmp_path / f"{s}.{r}.pt", weights_only=True) for r in (0, 1)] for s in ("ddp", "fsdp")}
    for rank in (0, 1):
        ddp, sharded = results["ddp"][rank], results["fsdp"][rank]
        assert abs(ddp["loss"] - sharded["loss"]) <= 1e-6
        assert ddp["grads"].keys() == sharded["grads"].keys() and len(ddp["grads"]) > 20
        assert max_diff(ddp["grads"], sharded["grads"]) <= 1e-6
        assert max(g.abs().max().item() for g in ddp["grads"].values()) > 1e-3      # the gradients are not zero
        for part in ("params", "optimizer"):
            ratio = sharded["bytes"][part] / ddp["bytes"][part]
            assert 0.45 < ratio < 0.55, (rank, part, ratio, ddp["bytes"], sharded["bytes"])
    assert results["ddp"][0]["grads"]["logit_scale"].item() != 0.0


def train_losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}, [r for r in rows if "val/loss" in r]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_sigkill_and_resume_equals_uninterrupted_and_loads_in_one_process(tmp_path):
    import mmfm
    from mmfm.models.checkpoint import consolidate_checkpoint, load_weights

    shards = make_shards(tmp_path / "shards", 16, 4)
    val = make_shards(tmp_path / "val", 6, 4, prefix="v")      # shards of 4 and 2: the ranks evaluate unevenly
    cfg = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", data={"batch_size": 2, "val": [{"path": val}]},
                       train_cfg={"max_steps": 6, "ckpt_every_steps": 3, "strategy": "fsdp"}, eval={"every_steps": 1})

    killed = torchrun_script(tmp_path, "killer", KILLER, str(cfg), "5")      # killed in the evaluation at step 5
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").resolve().name == "step_00000003"
    assert (ckpts / "latest" / "sharded" / ".metadata").is_file() and not (ckpts / "latest" / "model.safetensors").exists()
    first_losses, first_val = train_losses(tmp_path / "run")      # steps 1-5 trained, val up to step 4

    proc = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmfm", "train",
                str(cfg), "--resume", "latest"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    losses, val_rows = train_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 7))
    # steps 4 and 5 trained again from the step-3 checkpoint: the same batches, weights and AdamW moments give the
    # same losses (step 5's loss follows step 4's update, which reads the restored optimizer state)
    assert [losses[s] for s in (4, 5)] == pytest.approx([first_losses[s] for s in (4, 5)], abs=1e-6)
    assert abs(first_losses[5] - first_losses[4]) > 1e-4
    assert [r["val/loss"] for r in val_rows if r["step"] == 4] == pytest.approx(
        [r["val/loss"] for r in first_val if r["step"] == 4], abs=1e-6)
    assert all(r["val/samples"] == 6 for r in val_rows) and len(val_rows) == 6   # every val sample, once a step

    # one process, no process group: the sharded checkpoints read back whole
    model = mmfm.load(tmp_path / "run")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    file = consolidate_checkpoint(tmp_path / "run")
    assert file.name == "model.safetensors" and file.parent.name == "step_00000006"
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    load_weights(model, file)
    assert max_diff(before, model.state_dict()) == 0.0 and mmfm.load(tmp_path / "run").checkpoint_path == str(file.parent)
