"""`mmfm train` under torchrun with 2 gloo processes equals 1 process on the same global batch."""
import json

import pytest

from tests.helpers import headed_captioner
from train_helpers import load_weights, make_shards, max_diff, torchrun, write_config


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_matches_one_process(tmp_path):
    from mmfm.cli import main

    shards = make_shards(tmp_path / "shards", 8, 4)        # 2 shards: one per rank, both for 1 process
    one = write_config(tmp_path / "one.yaml", shards, tmp_path / "one", data={"batch_size": 8},
                       train_cfg={"max_steps": 2})
    two = write_config(tmp_path / "two.yaml", shards, tmp_path / "two", data={"batch_size": 4},
                       train_cfg={"max_steps": 2})
    assert main(["train", str(one)]) == 0
    proc = torchrun(2, "train", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 8 (2 ranks x 4" in proc.stderr
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) == 2 and l1 == pytest.approx(l2, rel=1e-5, abs=1e-6)
    w1 = load_weights(tmp_path / "one" / "checkpoints" / "latest")
    w2 = load_weights(tmp_path / "two" / "checkpoints" / "latest")
    assert max_diff(w1, w2) < 1e-5
    assert abs(l1[0] - l1[1]) > 1e-4            # the first step changed the weights: the check has teeth

    # DDP + gradient accumulation (2 ranks x 2 micro-batches x 2): no_sync on the first micro-batch and the
    # features-mode recompute still give the one-process step, negatives from every rank and micro-batch
    acc = write_config(tmp_path / "acc.yaml", shards, tmp_path / "acc", data={"batch_size": 2},
                       train_cfg={"max_steps": 2, "grad_accum": 2})
    proc = torchrun(2, "train", str(acc))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(tmp_path / "acc") == pytest.approx(l1, rel=1e-5, abs=1e-6)
    assert max_diff(w1, load_weights(tmp_path / "acc" / "checkpoints" / "latest")) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ["convnext", "vit_map"])
def test_two_process_captioner_with_a_pooled_timm_tower(tmp_path, arch):
    """A captioner reads only the tower's tokens; timm's pooling head (ConvNeXt's head.norm, a MAP ViT's
    attn_pool) must not be left without gradients, or DDP (find_unused_parameters: false) fails at step 2."""
    shards = make_shards(tmp_path / "shards", 8, 4)
    cfg = write_config(tmp_path / "cap.yaml", shards, tmp_path / "run", data={"batch_size": 2},
                       train_cfg={"max_steps": 3}, model=headed_captioner(arch), task={"name": "caption"})
    proc = torchrun(2, "train", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(tmp_path / "run")) == 3
