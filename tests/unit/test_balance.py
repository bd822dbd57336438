"""``data.balance``: attribute-balanced sampling and loss weights in the streaming loader, exact under resume and
across 2 ranks, with group sizes counted from the shards or read from ``mmfm shards audit``'s JSON."""
import io
import json
from collections import Counter

import pytest
import torch
from PIL import Image

from mmfm.config.data import BalanceConfig, DataConfig
from mmfm.data.balance import Balancer
from mmfm.data.pipeline import build_loader
from mmfm.data.shards import write_shards
from mmfm.data.shards.audit import MISSING, audit_shards, write_audit

# 40 samples in 4 shards: tone a x 28, b x 8, none x 4 (interleaved so every shard holds each group)
TONES = (["a"] * 7 + ["b"] * 2 + [None]) * 4


class Proc:
    """Module-level (picklable) processor: a tiny image tensor and the key's number as text."""

    def __call__(self, sample):
        return {"image": torch.zeros(1), "text_ids": torch.tensor([int(sample["__key__"][1:])])}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("balance") / "shards"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    write_shards(({"__key__": f"k{i:03d}", "png": buf.getvalue(), "txt": f"c{i}",
                   "json": {"tone": t} if t else {}} for i, t in enumerate(TONES)), root, shard_size=10)
    return root


def cfg(mode="sample", **kw):
    return DataConfig(shuffle_buffer=8, balance=BalanceConfig(key="tone", mode=mode, **kw))


def _tone(key: str):
    return TONES[int(key[1:])] or MISSING


def _keys(bundle):
    return [k for b in bundle for k in b["key"]]


def test_groups_and_weights_by_hand():
    b = Balancer("tone", "weight", {"a": 28, "b": 8, MISSING: 4})
    assert b.groups == [MISSING, "a", "b"]
    assert b.keep == {MISSING: 1.0, "a": 4 / 28, "b": 4 / 8}
    assert b.weight == pytest.approx({MISSING: 40 / (3 * 4), "a": 40 / (3 * 28), "b": 40 / (3 * 8)})
    with pytest.raises(Exception, match="nothing to balance"):
        Balancer("tone", "sample", {"a": 3})


def test_sampling_evens_out_the_groups(shards):
    plain = Counter(_tone(k) for e in range(3) for k in _keys(
        build_loader(str(shards), Proc(), batch_size=4, workers=0, train=True, world=(0, 1), epoch=e,
                     data_cfg=DataConfig(shuffle_buffer=8))))
    bal = build_loader(str(shards), Proc(), batch_size=4, workers=0, train=True, world=(0, 1), data_cfg=cfg())
    seen = Counter()
    for e in range(3):
        bal.set_epoch(e)
        for batch in bal:
            seen.update(_tone(k) for k in batch["key"])
            assert [bal.dataset.balance.groups[g] for g in batch["group"].tolist()] == \
                [_tone(k) for k in batch["key"]]
    assert plain["a"] / sum(plain.values()) == pytest.approx(0.7)
    assert sum(seen.values()) == sum(plain.values()) == 120              # the epoch length is unchanged
    assert all(0.25 < seen[g] / 120 < 0.42 for g in ("a", "b", MISSING))   # about a third each (was 70/20/10)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_samples(shards, workers):
    full = build_loader(str(shards), Proc(), batch_size=4, workers=workers, train=True, world=(0, 1),
                        data_cfg=cfg(), epoch=1)
    ref = _keys(full)
    part = build_loader(str(shards), Proc(), batch_size=4, workers=workers, train=True, world=(0, 1),
                        data_cfg=cfg(), epoch=1)
    it = iter(part)
    head = [k for _ in range(3) for k in next(it)["key"]]
    state = part.state_dict()
    del it
    again = build_loader(str(shards), Proc(), batch_size=4, workers=workers, train=True, world=(0, 1),
                         data_cfg=cfg())
    again.load_state_dict(state)
    again.set_epoch(1)
    assert head + _keys(again) == ref


def test_two_ranks_read_their_own_shards_the_same_way_every_time(shards):
    def ranks():
        return [_keys(build_loader(str(shards), Proc(), batch_size=4, workers=1, train=True, world=(r, 2),
                                   data_cfg=cfg(), epoch=2)) for r in range(2)]
    k = ranks()
    assert k == ranks() and len(k[0]) == len(k[1]) == 20
    shard_of = lambda key: int(key[1:]) // 10            # noqa: E731
    assert not {shard_of(x) for x in k[0]} & {shard_of(x) for x in k[1]}     # ranks read disjoint shards
    assert Counter(_tone(x) for x in k[0] + k[1])["a"] < 0.5 * 40          # 70% without balancing


def test_a_small_source_of_a_large_group_waits_for_its_coins_instead_of_failing(shards, tmp_path):
    """Two weighted sources: the second holds 3 samples, all of the largest group (keep probability 4/31), so most
    passes over it keep none. The reader goes on to the next pass (it used to stop with "got no readable
    samples"); a source of only that group still yields its samples, and the wait is bounded."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    small = tmp_path / "small"
    write_shards(({"__key__": f"k{100 + i}", "png": buf.getvalue(), "txt": "x", "json": {"tone": "a"}}
                  for i in range(3)), small, shard_size=10)
    srcs = [(str(shards), 0.5), (str(small), 0.5)]
    data_cfg = DataConfig(shuffle_buffer=8, samples_per_epoch=40, balance=BalanceConfig(key="tone"))
    bundle = build_loader(srcs, Proc(), batch_size=4, workers=0, train=True, world=(0, 1), data_cfg=data_cfg)
    keys = _keys(bundle)
    small_keys = [k for k in keys if int(k[1:]) >= 100]
    assert len(keys) == 40 and set(small_keys) <= {"k100", "k101", "k102"}
    assert 8 < len(small_keys) < 32                        # about half the batches' samples (the source weight)


def test_weights_and_counts_from_an_audit(shards, tmp_path):
    write_audit(audit_shards(str(shards), "tone"), tmp_path / "audit")
    b = build_loader(str(shards), Proc(), batch_size=40, workers=0, train=True, world=(0, 1),
                     data_cfg=cfg("weight", counts=str(tmp_path / "audit" / "audit.json")))
    batch = next(iter(b))
    assert sorted(batch["key"]) == [f"k{i:03d}" for i in range(40)]              # weight mode keeps everything
    w = {k: float(x) for k, x in zip(batch["key"], batch["weight"])}
    assert w["k000"] == pytest.approx(40 / 84) and w["k007"] == pytest.approx(40 / 24)
    assert w["k009"] == pytest.approx(40 / 12)
    assert float(batch["weight"].mean()) == pytest.approx(1.0)
    with pytest.raises(Exception, match="audits 'tone', not 'x'"):
        build_loader(str(shards), Proc(), batch_size=4, workers=0, train=True, world=(0, 1),
                     data_cfg=DataConfig(balance=BalanceConfig(key="x", counts=str(tmp_path / "audit/audit.json"))))
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["groups"][MISSING]["n"] == 4
