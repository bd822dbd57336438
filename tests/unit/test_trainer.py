"""The trainer in-process on real shards and the tiny CLIP: optimizer groups, schedule, accumulation
equivalence, NaN stop, output-dir check, checkpoint layout/rotation, continued pre-training."""
import io
import json
import math

import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError, ExperimentConfig, apply_overrides, from_dict
from mmfm.data.shards import write_shards
from mmfm.train.builder import build_run
from mmfm.train.optim import build_scheduler, param_groups
from mmfm.train.accumulate import TaskForward, accumulate_gradients, accumulation_mode
from mmfm.train.trainer import NonFiniteLoss, Trainer


def _png(i):
    img = Image.new("RGB", (36, 36), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
    for x in range(0, 36, 6):
        img.putpixel((x, (i * 5) % 36), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def shards(root, n, per_shard, prefix="k"):
    write_shards(({"__key__": f"{prefix}{i:04d}", "png": _png(i), "txt": f"color number {i % 5} {prefix}"}
                  for i in range(n)), root, shard_size=per_shard)
    return str(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_data")
    return {"train": shards(root / "train", 32, 8), "val": shards(root / "val", 8, 8, prefix="v"),
            "old": shards(root / "old", 32, 8, prefix="o")}


def make_cfg(out, train, **over):
    base = {"model": {"name": "tiny"},
            "data": {"train": [{"path": train}], "batch_size": 8, "workers": 0, "shuffle_buffer": 16},
            "train": {"output_dir": str(out), "max_steps": 4, "warmup_steps": 2, "lr": 1e-3, "log_every": 1,
                      "ckpt_every_steps": None, "progress": False, "tensorboard": False}}
    return from_dict(ExperimentConfig, apply_overrides(base, [f"{k}={v}" for k, v in over.items()]))


def fit(cfg, task_wrapper=None, hooks=()):
    run = build_run(cfg)
    task = task_wrapper(run.task) if task_wrapper else run.task
    trainer = Trainer(cfg, task, run.train, run.val, list(run.hooks) + list(hooks))
    return trainer, trainer.fit()


def weights(task):
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------- optimizer
def test_param_groups_skip_decay_on_norms_biases_logit_scale(data, tmp_path):
    run = build_run(make_cfg(tmp_path, data["train"]))
    decay, no_decay = param_groups(run.task, 0.2)
    assert any("logit_scale" in n for n in no_decay["names"])
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("norm1.weight") or "ln_" in n for n in no_decay["names"])
    assert not any(n.endswith(".bias") for n in decay["names"])
    for p in run.task.model.visual.parameters():
        p.requires_grad_(False)
    decay2, no_decay2 = param_groups(run.task, 0.2)
    assert len(decay2["names"]) + len(no_decay2["names"]) < len(decay["names"]) + len(no_decay["names"])


def test_warmup_then_cosine():
    from mmfm.config.train import TrainConfig
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_scheduler(opt, TrainConfig(lr=1.0, warmup_steps=4), total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


# ---------------------------------------------------------------------------------- accumulation
def test_feature_accumulation_equals_one_big_batch(data, tmp_path):
    """Accumulating 2 x 4 keeps all 8 negatives: same step as one batch of 8 (open_clip's approach)."""
    big, _ = fit(make_cfg(tmp_path / "big", data["train"], **{"train.max_steps": 1}))
    acc, _ = fit(make_cfg(tmp_path / "acc", data["train"], **{"train.max_steps": 1, "train.grad_accum": 2,
                                                                "data.batch_size": 4}))
    assert acc.mode == "features"
    wa, wb = weights(big.task), weights(acc.task)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    la, lb = metrics(tmp_path / "big")[0]["train/loss"], metrics(tmp_path / "acc")[0]["train/loss"]
    assert la == pytest.approx(lb, rel=1e-5)


# AdamW's first steps move every weight by about lr * sign(g), which hides a gradient scale error: compare the
# gradients themselves, in float64 (equal up to summation order).
def _float64_task(model=None, task=None, seed=0):
    from mmfm.config import load_experiment
    from mmfm.tasks import build_task
    cfg = load_experiment(data={"model": {"name": "tiny", **(model or {})},
                                "task": {"name": "contrastive", **(task or {})}})
    torch.manual_seed(seed)
    return build_task(cfg).double()


def _float64_batch(task, n=8):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64),
            **task.tokenizer([f"color number {i} {'item ' * (i % 3)}" for i in range(n)])}


def _grads(task):
    return {n: p.grad.detach().clone() for n, p in task.named_parameters() if p.grad is not None}


def _halves(batch):
    return [{k: v[i:i + 4] for k, v in batch.items()} for i in (0, 4)]


SIGLIP = {"init_logit_bias": -10.0, "init_logit_scale": 2.302585}


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_feature_accumulation_gradients_equal_one_big_batch_float64(loss):
    """2 x 4 accumulated = one batch of 8, for every gradient: logit_scale / logit_bias (used by each micro-batch's
    loss) get the big batch's gradient once, not once per micro-batch."""
    model, task = (SIGLIP, {"contrastive": {"loss": "siglip"}}) if loss == "siglip" else ({}, {})
    big = _float64_task(model, task)
    batch = _float64_batch(big)
    big(batch)["loss"].backward()
    acc = _float64_task(model, task)
    assert accumulation_mode(acc) == "features"
    accumulate_gradients(TaskForward(acc), acc, _halves(batch), "features")
    ref, got = _grads(big), _grads(acc)
    assert got.keys() == ref.keys() and "model.logit_scale" in ref
    assert loss != "siglip" or "model.logit_bias" in ref
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=1e-9, atol=1e-12), (name, (got[name] / g).flatten()[:3])


def test_feature_accumulation_replays_dropout_masks_float64():
    """With dropout, each micro-batch's live pass draws the masks its cached pass drew (the RNG state is
    replayed, as GradCache does): the gradient is that of the features the loss saw."""
    drop = {"vision": {"timm_kwargs": {"proj_drop_rate": 0.3}}}
    micro = _halves(_float64_batch(_float64_task()))

    def one_graph(seed):            # the cached passes' features, in order, kept in one graph
        task = _float64_task(drop).train()
        torch.manual_seed(seed)
        feats = [task.encode(b) for b in micro]
        merged = {k: torch.cat([f[k] for f in feats]) if k.endswith("features") else feats[0][k] for k in feats[0]}
        task.compute_loss(merged)["loss"].backward()
        return _grads(task)

    acc = _float64_task(drop).train()
    torch.manual_seed(5)
    accumulate_gradients(TaskForward(acc), acc, micro, "features")
    ref, other, got = one_graph(5), one_graph(6), _grads(acc)
    name = "model.image_proj.weight"
    assert not torch.allclose(ref[name], other[name])              # dropout is on: the masks matter
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=1e-9, atol=1e-12), (name, (got[name] - g).abs().max())


class PlainRegression(torch.nn.Module):
    """A per-sample loss (like captioning): plain accumulation must equal the big batch."""
    accumulation_mode = "plain"

    def __init__(self, task):
        super().__init__()
        self.model = task.model

    def forward(self, batch):
        f = self.model.encode_image(batch["image"], normalize=True)
        return {"loss": (f ** 2).sum(1).mean() + f.mean(1).pow(2).mean()}


def test_plain_accumulation_equals_one_big_batch(data, tmp_path):
    big, _ = fit(make_cfg(tmp_path / "big", data["train"], **{"train.max_steps": 1}), PlainRegression)
    acc, _ = fit(make_cfg(tmp_path / "acc", data["train"], **{"train.max_steps": 1, "train.grad_accum": 2,
                                                                "data.batch_size": 4}), PlainRegression)
    assert acc.mode == "plain"
    wa, wb = weights(big.task), weights(acc.task)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


# ---------------------------------------------------------------------------------- bad runs
class NaNAtStep(torch.nn.Module):
    def __init__(self, task, at=3):
        super().__init__()
        self.inner, self.model, self.calls, self.at = task, task.model, 0, at

    def processor(self, train):
        return self.inner.processor(train)

    def forward(self, batch):
        self.calls += 1
        out = self.inner(batch)
        if self.calls >= self.at:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 6, "train.ckpt_every_steps": 2})
    with pytest.raises(NonFiniteLoss, match=r"NaN/inf at step 3.*step_00000002"):
        fit(cfg, NaNAtStep)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002"]
    assert (ckpts / "latest").resolve().name == "step_00000002"


def test_sigterm_saves_a_checkpoint_and_stops(data, tmp_path):
    import os
    import signal

    def term(task, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 8, "eval.every_steps": 1})
    previous = signal.getsignal(signal.SIGTERM)
    _, result = fit(cfg, hooks=[term])
    assert "stopped by signal" in result["stopped"] and result["step"] == 3
    assert (tmp_path / "checkpoints" / "latest").resolve().name == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) == previous


def test_unwritable_output_fails_before_training(data, tmp_path, capsys):
    from mmfm.cli import main
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    (tmp_path / "exp.yaml").write_text(f"model: {{name: tiny}}\ndata: {{train: [{{path: {data['train']}}}]}}\n")
    rc = main(["train", str(tmp_path / "exp.yaml"), "--set", f"train.output_dir={blocker}/run"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.output_dir: cannot write to" in err and str(blocker) in err


def test_init_from_other_architecture_lists_tensors(data, tmp_path):
    src, _ = fit(make_cfg(tmp_path / "a", data["train"], **{"train.max_steps": 1}))
    cfg = make_cfg(tmp_path / "b", data["train"], **{"train.init_from": str(tmp_path / "a"),
                                                     "model.embed_dim": 16})
    with pytest.raises(ConfigError, match=r"shape mismatches.*text_projection|projection"):
        fit(cfg)


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_complete_rotated_and_loadable(data, tmp_path):
    import mmfm
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 5, "train.ckpt_every_minutes": 1e-6,
                                               "train.keep_last": 2, "train.tensorboard": True})
    trainer, _ = fit(cfg)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000004", "step_00000005"]
    latest = ckpts / "latest"
    assert latest.is_symlink() and latest.resolve().name == "step_00000005"
    for name in ("model.safetensors", "config.yaml", "meta.json", "trainer_state.pt"):
        assert (latest / name).is_file()
    assert not list(ckpts.glob(".*tmp*"))
    state = torch.load(latest / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5 and state["data"][0]["epoch"] == 1 and state["data"][0]["batches"] == 1
    assert json.loads((latest / "meta.json").read_text())["step"] == 5
    model = mmfm.load(tmp_path)
    w = weights(trainer.task)
    assert all(torch.equal(w[k], v) for k, v in model.state_dict().items())
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5]
    assert {"train/lr", "train/samples_per_s", "train/loss"} <= set(rows[0])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_continued_pretraining_with_replay(data, tmp_path):
    """init_from loads weights only; the LR warms up again; val loss at start and end; two-source mix."""
    first, _ = fit(make_cfg(tmp_path / "a", data["train"], **{"train.max_steps": 3}))
    cfg = make_cfg(tmp_path / "b", data["train"], **{
        "train.init_from": str(tmp_path / "a"), "train.max_steps": 3, "train.warmup_steps": 2,
        "data.train": f"[{{path: {data['train']}, weight: 0.8}}, {{path: {data['old']}, weight: 0.2}}]",
        "data.val": f"[{{path: {data['val']}}}]"})
    start = {}

    def hook(task, step):
        if step == 0:
            start.update({k: v.detach().clone() for k, v in task.model.state_dict().items()})
        return {"hook/step": float(step)}
    trainer, result = fit(cfg, hooks=[hook])
    w_first = weights(first.task)
    assert all(torch.equal(start[k], w_first[k]) for k in w_first)        # weights loaded before step 1
    rows = metrics(tmp_path / "b")
    evals = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in evals] == [0, 3] and "val/loss" in result
    train_rows = [r for r in rows if "train/lr" in r]
    assert train_rows[0]["train/lr"] == pytest.approx(cfg.train.lr * 0.5)   # warmup restarted
    assert trainer.train_data.samples_per_epoch == 40                      # 32 new samples / 0.8


def test_contrastive_experiment_configs_load_and_build(repo_root):
    """Every configs/experiments/contrastive/*.yaml loads strictly and builds its task (data not needed)."""
    from mmfm.config import load_experiment
    from mmfm.tasks import build_task
    paths = sorted((repo_root / "configs" / "experiments" / "contrastive").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_experiment(path)
        task = build_task(cfg)
        trainable = [n for n, p in task.named_parameters() if p.requires_grad]
        assert trainable and cfg.data.train
        if "lit" in path.stem:
            assert not any(n.startswith("model.text.") and "proj" not in n for n in trainable)


# ---------------------------------------------------------------------------------- resume / run folder / signals
def test_resume_rebuilds_schedule_from_current_config(data, tmp_path, caplog):
    """A finished 4-step run resumed with more steps and a lower lr trains on the new schedule (not at lr 0)."""
    import logging

    from mmfm.train.optim import lr_lambda_factory
    fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 4}))
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 8, "train.lr": 5e-4, "train.resume": "latest"})
    with caplog.at_level(logging.INFO, logger="mmfm.train"):
        trainer, _ = fit(cfg)
    fn = lr_lambda_factory(2, 8)
    rows = [r for r in metrics(tmp_path) if "train/lr" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["train/lr"] for r in rows[4:]] == pytest.approx([5e-4 * fn(i) for i in range(4, 8)], rel=1e-5)
    assert min(r["train/lr"] for r in rows[4:]) > 0
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 5e-4
    assert "train.max_steps: 4 -> 8" in caplog.text and "train.lr: 0.001 -> 0.0005" in caplog.text


def test_resume_still_refuses_a_changed_batch_size(data, tmp_path):
    fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 1}))
    with pytest.raises(ConfigError, match=r"batch_size=8, this run has 4.*data.batch_size"):
        fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 2, "train.resume": "latest",
                                                 "data.batch_size": 4}))


def test_resume_drops_metrics_rows_after_the_checkpoint(data, tmp_path):
    """A run dies after step 3 with its checkpoint at step 2: the resumed run redoes step 3, listed once."""
    def crash(task, step):
        if step == 3:
            raise RuntimeError("crash")
        return {}
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 4, "train.ckpt_every_steps": 2,
                                               "eval.every_steps": 1, "train.tensorboard": True})
    with pytest.raises(RuntimeError, match="crash"):
        fit(cfg, hooks=[crash])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo')                        # a row torn by the crash
    fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 4, "train.ckpt_every_steps": 2,
                                             "train.resume": "latest", "train.tensorboard": True}))
    assert [r["step"] for r in metrics(tmp_path) if "train/loss" in r] == [1, 2, 3, 4]
    assert not list(tmp_path.glob(".metrics.jsonl.tmp*"))


def test_fresh_run_refuses_a_folder_with_checkpoints(data, tmp_path, capsys):
    from mmfm.cli import main
    fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 2}))
    ckpts = tmp_path / "checkpoints"
    before = sorted(p.name for p in ckpts.iterdir())
    config_before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run's checkpoints.*--resume latest.*--overwrite"):
        fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 1}))
    assert sorted(p.name for p in ckpts.iterdir()) == before and (ckpts / "latest").resolve().name == "step_00000002"
    assert (tmp_path / "config.yaml").read_text() == config_before
    (tmp_path / "exp.yaml").write_text(f"model: {{name: tiny}}\ndata: {{train: [{{path: {data['train']}}}]}}\n")
    rc = main(["train", str(tmp_path / "exp.yaml"), "--output-dir", str(tmp_path)])
    assert rc == 2 and "--resume latest" in capsys.readouterr().err
    fit(make_cfg(tmp_path, data["train"], **{"train.max_steps": 1, "train.overwrite": True}))
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001"]
    assert [r["step"] for r in metrics(tmp_path)] == [1]
    with pytest.raises(ConfigError, match="train.overwrite: cannot be combined with train.resume"):
        make_cfg(tmp_path, data["train"], **{"train.overwrite": True, "train.resume": "latest"})


def test_ctrl_c_saves_a_checkpoint_and_stops(data, tmp_path):
    import os
    import signal

    def interrupt(task, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return {}
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 8, "eval.every_steps": 1})
    previous = signal.getsignal(signal.SIGINT)
    _, result = fit(cfg, hooks=[interrupt])
    assert result["step"] == 3 and result["signal"] == signal.SIGINT
    assert "stopped by signal SIGINT" in result["stopped"] and "--resume latest" in result["stopped"]
    assert (tmp_path / "checkpoints" / "latest").resolve().name == "step_00000003"
    assert signal.getsignal(signal.SIGINT) == previous


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU cadence (NaN read every log_every) needs CUDA")
def test_sigterm_on_cuda_stops_within_one_step(data, tmp_path):
    import os
    import signal

    def term(task, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}
    cfg = make_cfg(tmp_path, data["train"], **{"train.max_steps": 8, "train.log_every": 100,
                                               "train.device": "cuda", "eval.every_steps": 1})
    _, result = fit(cfg, hooks=[term])
    assert result["step"] == 3 and (tmp_path / "checkpoints" / "latest").resolve().name == "step_00000003"


# ---------------------------------------------------------------------------------- components
def test_evaluate_works_outside_fit(data, tmp_path):
    """Trainer.evaluate() before (and without) fit(): validation loss and hooks on the current weights, the task
    back in train mode, nothing written; fit() afterwards trains as usual."""
    cfg = make_cfg(tmp_path, data["train"], **{"data.val": f"[{{path: {data['val']}}}]"})
    run = build_run(cfg)
    seen = []

    def hook(task, step):
        seen.append((step, task.training))
        return {"hook/calls": float(len(seen))}
    trainer = Trainer(cfg, run.task, run.train, run.val, [hook])
    first = trainer.evaluate()
    assert first["val/samples"] == 8 and math.isfinite(first["val/loss"]) and first["hook/calls"] == 1.0
    assert seen == [(0, False)] and trainer.task.training and trainer.last_eval == first
    assert trainer.evaluate()["val/loss"] == first["val/loss"]             # the same weights, the same loss
    assert not (tmp_path / "metrics.jsonl").exists()
    assert trainer.fit()["step"] == 4 and [r["step"] for r in metrics(tmp_path) if "val/loss" in r] == [4]
    assert trainer.evaluate()["val/loss"] == trainer.last_eval["val/loss"] != first["val/loss"]   # and after it


def test_cadence_decides_what_is_due_after_each_step(tmp_path):
    """One place decides: log every log_every and at the end, eval and checkpoint when due but never at the last
    step (the end does both once), a NaN loss raises naming the step, a signal stops."""
    import signal
    from types import SimpleNamespace

    from mmfm.train.cadence import Cadence
    from mmfm.train.checkpointer import Checkpointer
    from mmfm.train.distributed import DistInfo
    from mmfm.train.evaluator import Evaluator
    cfg = make_cfg(tmp_path, "unused", **{"train.max_steps": 6, "train.log_every": 2, "train.ckpt_every_steps": 3,
                                          "eval.every_steps": 2})
    ckpt = Checkpointer(cfg, SimpleNamespace(local=tmp_path), DistInfo(), None, None, None, None)
    cadence = Cadence(cfg.train, 6, "cpu", ckpt, Evaluator(cfg, task=None))
    ok = torch.zeros((), dtype=torch.bool)
    due = {s: cadence.at(s, 0, ok) for s in range(1, 7)}
    assert [s for s, d in due.items() if d.log] == [2, 4, 6]
    assert [s for s, d in due.items() if d.eval] == [2, 4]
    assert [s for s, d in due.items() if d.checkpoint] == [3]
    assert not any(d.stop for d in due.values())
    with pytest.raises(NonFiniteLoss, match="NaN/inf at step 5 .*no checkpoint was written"):
        cadence.at(5, 0, torch.ones((), dtype=torch.bool))
    cadence.stop_signal = signal.SIGTERM
    assert cadence.at(1, 0, ok).stop


def test_cli_run_checks_the_output_dir_and_joins_the_process_group_once(data, tmp_path, monkeypatch):
    """`mmfm train`: the output folder is checked (writable, not another run's) and the process group joined once,
    though the command, train_experiment and the Trainer each need them."""
    from mmfm.cli import main
    from mmfm.train import distributed as D, run_folder
    calls = {"writable": 0, "run": 0, "init": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(run_folder.RunFolder, "check_writable", counted("writable", run_folder.RunFolder.check_writable))
    monkeypatch.setattr(run_folder, "check_run_folder", counted("run", run_folder.check_run_folder))
    monkeypatch.setattr(D, "init_distributed", counted("init", D.init_distributed))
    (tmp_path / "exp.yaml").write_text(f"model: {{name: tiny}}\ndata: {{train: [{{path: {data['train']}}}], "
                                       f"batch_size: 8, workers: 0}}\n")
    rc = main(["train", str(tmp_path / "exp.yaml"), "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
               "--no-progress"])
    assert rc == 0 and calls == {"writable": 1, "run": 1, "init": 1}
