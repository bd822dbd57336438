"""train.precision fp16 (GradScaler, skipped steps counted), train.report_to wandb (offline files read back) and
the new train: keys' validation, on the tiny CLIP and real shards, in-process."""
import glob
import json
import struct
import time

import pytest
import torch

from mmfm.config import ConfigError, ExperimentConfig, apply_overrides, from_dict
from mmfm.train.builder import build_run
from mmfm.train.trainer import Trainer

from test_trainer import data, make_cfg, metrics  # noqa: F401  (the module-scoped shards fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def fit_from_init(cfg):
    run = build_run(cfg)
    before = {k: v.clone() for k, v in run.task.model.state_dict().items()}
    Trainer(cfg, run.task, run.train).fit()
    after = run.task.model.state_dict()
    return max((after[k].double() - before[k].double()).abs().max().item() for k in before)


def test_fp16_counts_and_logs_the_steps_the_grad_scaler_skips(data, tmp_path):
    """fp16 autocast + torch.amp.GradScaler run on the CPU too (slowly): a first loss scale so large that every
    gradient overflows skips every optimizer step (the weights stay as they were, the scale halves each time);
    a small one skips none."""
    out = tmp_path / "overflow"
    fp16 = {"train.precision": "fp16", "train.max_steps": 2, "data.batch_size": 4}
    moved = fit_from_init(make_cfg(out, data["train"], **fp16, **{"train.grad_scaler_init": 2.0 ** 60}))
    rows = [r for r in metrics(out) if "train/loss" in r]
    assert [r["train/skipped_steps"] for r in rows] == [1, 2]
    assert [r["train/loss_scale"] for r in rows] == [2.0 ** 59, 2.0 ** 58]
    assert moved == 0.0
    state = torch.load(out / "checkpoints" / "latest" / "trainer_state.pt", weights_only=True)
    assert state["skipped_steps"] == 2 and state["scaler"]["scale"] == 2.0 ** 58   # resumes with its scale

    out = tmp_path / "fine"
    moved = fit_from_init(make_cfg(out, data["train"], **fp16, **{"train.grad_scaler_init": 16}))
    assert [r["train/skipped_steps"] for r in metrics(out) if "train/loss" in r] == [0, 0]
    assert moved > 1e-4


def test_fp32_has_no_scaler_columns(data, tmp_path):
    out = tmp_path / "fp32"
    fit_from_init(make_cfg(out, data["train"], **{"train.max_steps": 1}))
    assert not any("train/skipped_steps" in r for r in metrics(out))


def wandb_records(path):
    """The records of a wandb transaction log (``run-ID.wandb``): LevelDB log blocks of protobuf ``Record``s.
    (wandb 0.2x+ reads them in its Go core; it ships no Python reader.)"""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    if len(data) < 7:                                 # not written yet
        return
    assert data[:4] == b":W&B", data[:7]
    pos, block, part = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:                                  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                            # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(part)
            part = b""
            yield rec


def wandb_history(run_dir, wait_s: float = 30.0) -> dict[int, dict]:
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    # wandb's core process may still be writing the log when run.finish() returns: wait (bounded) for its last
    # record, "exit"
    deadline = time.monotonic() + wait_s
    while not (records := list(wandb_records(files[0]))) or records[-1].WhichOneof("record_type") != "exit":
        assert time.monotonic() < deadline, f"{files[0]}: no exit record after {wait_s} s"
        time.sleep(0.2)
    rows: dict[int, dict] = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            row = rows.setdefault(rec.history.step.num, {})
            for item in rec.history.item:
                row["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return rows


def test_wandb_offline_files_hold_the_metrics_of_metrics_jsonl(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = make_cfg(out, data["train"], **{"train.max_steps": 3, "train.report_to": "[tensorboard, wandb]",
                                          "data.val": f"[{{path: {data['val']}}}]", "eval.every_steps": 2})
    run = build_run(cfg)
    Trainer(cfg, run.task, run.train, run.val).fit()
    history = wandb_history(out)
    rows = metrics(out)
    assert any("val/loss" in r for r in rows) and sum("train/loss" in r for r in rows) == 3
    assert {r["step"] for r in rows} <= set(history), {k: sorted(v)[:3] for k, v in history.items()}
    for row in rows:
        logged = history[row["step"]]
        for k, v in row.items():
            if k not in ("step", "time"):
                assert logged[k] == pytest.approx(v, rel=1e-6), (row["step"], k)


@pytest.mark.parametrize("key,value,message", [
    ("train.strategy", "zero3", "train.strategy: 'zero3' is not one of ['ddp', 'fsdp']"),
    ("train.precision", "fp8", "train.precision: 'fp8' is not one of"),
    ("train.report_to", "[tensorboard, mlflow]", "train.report_to[1]: 'mlflow' is not one of"),
    ("train.grad_scaler_init", "0", "train.grad_scaler_init: must be > 0"),
])
def test_new_train_keys_are_checked(key, value, message):
    base = {"model": {"name": "tiny"}, "data": {"train": [{"path": "x"}]}}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(ExperimentConfig, apply_overrides(base, [f"{key}={value}"]))
