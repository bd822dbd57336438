"""Training with ``data.balance`` and the fairness regulariser: a resumed run consumes exactly the batches of an
uninterrupted one, and 2 gloo ranks train with it under torchrun (each rank's balanced stream, the group gap logged)."""
import json

import pytest
import yaml

from train_helpers import png, torchrun, write_config

from test_resume_train import fit_recording


def _shards(root):
    from mmfm.data.shards import write_shards
    tones = (["a"] * 5 + ["b", None]) * 8                     # 56 samples: a 40, b 8, none 8
    write_shards(({"__key__": f"k{i:03d}", "png": png(i), "txt": f"colour {i % 6}",
                   "json": {"tone": t} if t else {}} for i, t in enumerate(tones)), root, shard_size=14)
    return str(root)


BALANCE = {"batch_size": 4, "workers": 2, "balance": {"key": "tone", "mode": "sample"}}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_balanced_resume_equals_uninterrupted(tmp_path):
    shards = _shards(tmp_path / "shards")
    task = {"task": {"contrastive": {"fairness_weight": 0.5}}}
    ref = write_config(tmp_path / "ref.yaml", shards, tmp_path / "ref", data=BALANCE,
                       train_cfg={"max_steps": 8}, **task)
    part = write_config(tmp_path / "part.yaml", shards, tmp_path / "part", data=BALANCE,
                        train_cfg={"max_steps": 4, "ckpt_every_steps": 4}, **task)
    reference = fit_recording(ref)
    head = fit_recording(part)
    data = yaml.safe_load(part.read_text())
    data["train"].update(resume="latest", max_steps=8)
    part.write_text(yaml.safe_dump(data))
    tail = fit_recording(part)
    assert len(reference) == 8 and head == reference[:4] and tail == reference[4:]
    tones = [k for b in reference for k in b]
    share_a = sum(int(k[1:]) % 7 < 5 for k in tones) / len(tones)
    assert share_a < 0.5                                       # 5/7 = 71% without balancing
    rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/group_loss_gap" in r for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_train_balanced(tmp_path):
    shards = _shards(tmp_path / "shards")
    cfg = write_config(tmp_path / "two.yaml", shards, tmp_path / "two", data={**BALANCE, "workers": 0},
                       train_cfg={"max_steps": 3}, task={"contrastive": {"fairness_weight": 0.5}})
    proc = torchrun(2, "train", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
