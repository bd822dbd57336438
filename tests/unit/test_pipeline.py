"""The streaming loader on real tar shards: epochs, rank/worker splits, resume, mixing, preflight, decoding."""
import io
import logging
import os

import pytest
import torch
from PIL import Image

from mmfm.config.data import DataConfig
from mmfm.data.decode import Decoder
from mmfm.data.pipeline import build_loader
from mmfm.data.shards import ShardError, write_shards
from mmfm.data.transforms import build_transform


class Proc:
    """A tiny task-like processor: timm transform + byte 'tokenizer' (module level, picklable)."""

    def __init__(self, train=True, size=16):
        self.transform = build_transform({"input_size": size}, train)

    def __call__(self, sample):
        ids = torch.zeros(8, dtype=torch.long)
        raw = list(sample["txt"].encode())[:8]
        ids[: len(raw)] = torch.tensor(raw)
        return {"image": self.transform(sample["image"]), "text_ids": ids}


def _image(i, size=24, fmt="png"):
    img = Image.new("RGB", (size, size), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG")
    return buf.getvalue()


def make_shards(root, counts, prefix="s", extra=None):
    """One folder with len(counts) shards holding counts[i] samples each (+ manifest)."""
    samples = []
    n = 0
    for c in counts:
        for _ in range(c):
            samples.append({"__key__": f"{prefix}{n:05d}", "png": _image(n), "txt": f"caption {prefix}{n}"})
            n += 1
    # write_shards cuts by count; equal counts only, so write shard by shard for uneven sizes
    if len(set(counts)) == 1:
        write_shards(samples, root, shard_size=counts[0])
        return root
    from mmfm.data.shards.manifest import make_manifest, write_manifest
    from mmfm.data.shards.writer import ShardSink, encode_sample
    sink = ShardSink(root, shard_size=10**9)
    start = 0
    for c in counts:
        for s in samples[start:start + c]:
            sink.write(encode_sample(s))
        sink._writer.next_stream()
        start += c
    shards = sink.close()
    write_manifest(root, make_manifest(shards, {"png": "image", "txt": "caption"}))
    return root


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("four"), [10, 10, 10, 10])


def keys_of(bundle):
    out = []
    for batch in bundle:
        out += batch["key"]
    return out


def cfg(**kw):
    return DataConfig(**{"shuffle_buffer": 20, **kw})


def test_epoch_sees_every_sample_once_in_fixed_batches(four):
    b = build_loader(str(four), Proc(), batch_size=5, workers=2, train=True, world=(0, 1), data_cfg=cfg())
    assert (b.samples_per_epoch, b.steps_per_epoch, len(b)) == (40, 8, 8)
    batches = list(b)
    assert all(x["image"].shape == (5, 3, 16, 16) and x["text_ids"].shape == (5, 8) for x in batches)
    keys = [k for x in batches for k in x["key"]]
    assert sorted(keys) == [f"s{i:05d}" for i in range(40)]
    assert not any(k.startswith("_") for k in batches[0])


def test_order_is_deterministic_per_epoch_and_changes_across_epochs(four):
    def run(epoch):
        b = build_loader(str(four), Proc(), batch_size=5, workers=1, train=True, world=(0, 1),
                         data_cfg=cfg(), epoch=epoch)
        batches = list(b)
        assert list(b) == []                  # an epoch is consumed once; set_epoch starts the next
        return [k for x in batches for k in x["key"]], batches[0]["image"]
    (k0, im0), (k0b, im0b), (k1, _) = run(0), run(0), run(1)
    assert k0 == k0b and torch.equal(im0, im0b)
    assert k0 != k1 and sorted(k0) == sorted(k1)


def test_ranks_run_equal_steps_on_uneven_shards(tmp_path):
    root = make_shards(tmp_path / "uneven", [12, 12, 12, 3])
    bundles = [build_loader(str(root), Proc(), batch_size=4, workers=1, train=True, world=(r, 2),
                            data_cfg=cfg()) for r in range(2)]
    assert bundles[0].samples_per_epoch == 39 and len(bundles[0]) == len(bundles[1]) == 4
    k = [keys_of(b) for b in bundles]
    assert len(k[0]) == len(k[1]) == 16
    assert not set(k[0]) & set(k[1])          # ranks read disjoint shards


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(four, workers):
    full = build_loader(str(four), Proc(), batch_size=4, workers=workers, train=True, world=(0, 1),
                        data_cfg=cfg(), epoch=1)
    ref = [(x["key"], x["image"]) for x in full]
    part = build_loader(str(four), Proc(), batch_size=4, workers=workers, train=True, world=(0, 1),
                        data_cfg=cfg(), epoch=1)
    it = iter(part)
    head = [next(it)["key"] for _ in range(3)]
    state = part.state_dict()
    del it
    again = build_loader(str(four), Proc(), batch_size=4, workers=workers, train=True, world=(0, 1),
                         data_cfg=cfg())
    again.load_state_dict(state)
    again.set_epoch(1)                       # what a trainer loop does next: keeps the loaded position
    tail = [(x["key"], x["image"]) for x in again]
    assert head == [k for k, _ in ref[:3]]
    assert [k for k, _ in tail] == [k for k, _ in ref[3:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tail, ref[3:]))   # same crops too


def test_resume_refuses_another_topology(four):
    b = build_loader(str(four), Proc(), batch_size=4, workers=1, train=True, world=(0, 1), data_cfg=cfg())
    state = b.state_dict()
    other = build_loader(str(four), Proc(), batch_size=4, workers=2, train=True, world=(0, 1), data_cfg=cfg())
    with pytest.raises(Exception, match="workers"):
        other.load_state_dict(state)


def test_weighted_mix_follows_weights(tmp_path):
    a = make_shards(tmp_path / "a", [20, 20], prefix="a")
    b = make_shards(tmp_path / "b", [20, 20], prefix="b")
    srcs = [(str(a), 3.0), (str(b), 1.0)]
    bundle = build_loader(srcs, Proc(), batch_size=10, workers=0, train=True, world=(0, 1),
                          data_cfg=cfg(samples_per_epoch=400))
    keys = keys_of(bundle)
    frac = sum(k.startswith("a") for k in keys) / len(keys)
    assert len(keys) == 400 and 0.68 < frac < 0.82
    # default epoch = one pass over the source the weights exhaust first: 40 / 0.75
    bundle = build_loader(srcs, Proc(), batch_size=1, workers=0, train=True, world=(0, 1), data_cfg=cfg())
    assert bundle.samples_per_epoch == 53


def test_resampled_mode_runs_past_the_data(tmp_path):
    root = make_shards(tmp_path / "r", [5])
    b = build_loader(str(root), Proc(), batch_size=4, workers=2, train=True, world=(0, 2),
                     data_cfg=cfg(resampled=True, samples_per_epoch=40))
    assert len(keys_of(b)) == 16                # 5 batches, rounded to whole rounds over 2 workers


def test_val_split_covers_samples_once(four):
    per_rank = [keys_of(build_loader(str(four), Proc(False), batch_size=7, workers=1, train=False,
                                     world=(r, 3), data_cfg=cfg())) for r in range(3)]
    assert [len(k) for k in per_rank] == [14, 13, 13]      # 40 samples: every one, short last batches
    flat = [k for ks in per_rank for k in ks]
    assert len(set(flat)) == len(flat) == 40


def test_val_sees_every_sample_once_with_fewer_batches_than_readers(tmp_path):
    """The issue's case: 400 samples, 2 ranks x 4 workers, batch 64 (fewer full batches than readers). Each
    reader keeps its share, once, ending on a short batch; no reader wraps around and none reads nothing."""
    root = make_shards(tmp_path / "v", [100, 100, 100, 100], prefix="v")
    seen, sizes, lengths = [], [], []
    for rank in range(2):
        b = build_loader(str(root), Proc(False), batch_size=64, workers=4, train=False, world=(rank, 2),
                         data_cfg=cfg())
        lengths.append(len(b))
        for batch in b:
            seen += batch["key"]
            sizes.append(len(batch["key"]))
    assert len(seen) == 400 and sorted(seen) == [f"v{i:05d}" for i in range(400)]
    assert sorted(sizes) == [50] * 8 and lengths == [4, 4]       # 8 readers x 50 samples, one short batch each


# ------------------------------------------------------------------------------------- preflight
def test_preflight_too_few_shards(four):
    with pytest.raises(ShardError, match=r"4 shard\(s\) but 6 readers"):
        build_loader(str(four), Proc(), batch_size=2, workers=3, train=True, world=(0, 2), data_cfg=cfg())


def test_preflight_truncated_tar_is_named(tmp_path):
    root = make_shards(tmp_path / "t", [10, 10])
    victim = root / "shard-000001.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="shard-000001.tar.*truncated"):
        build_loader(str(root), Proc(), batch_size=2, workers=0, train=True, world=(0, 1), data_cfg=cfg())
    # without a manifest the tar scan still names it
    os.unlink(root / "manifest.json")
    with pytest.raises(ShardError, match="shard-000001.tar.*(truncated|unreadable)"):
        build_loader(str(root / "shard-{000000..000001}.tar"), Proc(), batch_size=2, workers=0, train=True,
                     world=(0, 1), data_cfg=cfg(samples_per_epoch=20))


def test_preflight_empty_shard_is_named(tmp_path):
    root = make_shards(tmp_path / "e", [10])
    (root / "shard-000001.tar").write_bytes(b"")
    with pytest.raises(ShardError, match=r"shard-000001.tar is empty"):
        build_loader(str(root / "shard-{000000..000001}.tar"), Proc(), batch_size=2, workers=0, train=True,
                     world=(0, 1), data_cfg=cfg(samples_per_epoch=20))
    import tarfile
    with tarfile.open(root / "shard-000001.tar", "w"):
        pass                                   # a valid tar with no members
    with pytest.raises(ShardError, match=r"shard-000001.tar is empty \(no samples\)"):
        build_loader(str(root / "shard-{000000..000001}.tar"), Proc(), batch_size=2, workers=0, train=True,
                     world=(0, 1), data_cfg=cfg(samples_per_epoch=20))


def test_preflight_missing_key_names_shard_and_sample(tmp_path):
    root = tmp_path / "m"
    write_shards([{"__key__": f"k{i}", "png": _image(i), **({"txt": "x"} if i != 3 else {})} for i in range(6)],
                 root, shard_size=3)
    with pytest.raises(ShardError, match=r"shard-000001.tar: sample 'k3' lacks required key\(s\) \['txt'\]"):
        build_loader(str(root), Proc(), batch_size=2, workers=0, train=True, world=(0, 1),
                     data_cfg=cfg(preflight="full"))


def test_missing_source_is_named(tmp_path):
    with pytest.raises(ShardError, match="nope-000000.tar"):
        build_loader(str(tmp_path / "nope-{000000..000001}.tar"), Proc(), batch_size=2, workers=0, train=True,
                     world=(0, 1), data_cfg=cfg())


# ------------------------------------------------------------------------------------- decoding
def test_corrupt_samples_are_skipped_counted_and_warned(tmp_path, caplog):
    samples = [{"__key__": f"k{i}", "png": _image(i), "txt": "ok"} for i in range(12)]
    samples[2]["png"] = b"not an image at all"
    samples[7]["png"] = _image(7)[:40]                    # truncated PNG
    write_shards(samples, tmp_path / "c", shard_size=12)
    with caplog.at_level(logging.WARNING, logger="mmfm.data"):
        b = build_loader(str(tmp_path / "c"), Proc(), batch_size=5, workers=0, train=True, world=(0, 1),
                         data_cfg=cfg())
        keys = keys_of(b)
    assert len(keys) == 10 and "k2" not in keys and "k7" not in keys
    assert b.corrupt_total == 2
    assert "k2" in caplog.text and "skipping a corrupt sample" in caplog.text


def test_decoder_max_pixels_exif_and_draft():
    dec = Decoder(max_pixels=50 * 50)
    with pytest.raises(Exception, match="too_many_pixels"):
        dec({"__key__": "big", "png": _image(0, size=60)})
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6                                      # orientation: rotate 90 CW
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out = Decoder()({"__key__": "r", "jpg": buf.getvalue(), "txt": b" hi ", "cls": b"3", "json": b'{"a": 1}'})
    assert out["image"].size == (20, 40) and out["image"].mode == "RGB"
    assert (out["txt"], out["cls"], out["json"]) == ("hi", 3, {"a": 1})
    big = io.BytesIO()
    Image.new("RGB", (512, 384), (1, 2, 3)).save(big, format="JPEG")
    small = Decoder(decode_size=64)({"__key__": "d", "jpg": big.getvalue()})["image"]
    assert small.size == (128, 96)                         # 1/4 scale, both sides >= 64


def test_sample_split_is_exact_on_few_big_shards(tmp_path, caplog):
    root = make_shards(tmp_path / "few", [13, 13, 8])
    with caplog.at_level(logging.WARNING, logger="mmfm.data"):
        build_loader(str(root), Proc(), batch_size=2, workers=2, train=True, world=(0, 1), data_cfg=cfg())
    assert "uneven shares" in caplog.text and "data.split=sample" in caplog.text
    b = build_loader(str(root), Proc(), batch_size=2, workers=2, train=True, world=(0, 1),
                     data_cfg=cfg(split="sample"))
    keys = keys_of(b)
    assert len(keys) == 32 and len(set(keys)) == 32       # 17 batches -> 16 (whole rounds), no repeats


@pytest.mark.parametrize("train", [False, True])
def test_build_transform_is_timms_with_a_fused_to_tensor(train):
    import random

    import numpy as np
    from timm.data import create_transform
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    pre = {"input_size": 32, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    ref = create_transform(32, is_training=train, crop_pct=1.0, interpolation="bicubic", mean=pre["mean"],
                           std=pre["std"], scale=(0.9, 1.0), hflip=0.0, color_jitter=None)
    mine = build_transform(pre, train)
    assert type(mine.transforms[-1]).__name__ == "ToNormalizedTensor"
    random.seed(1)
    torch.manual_seed(1)
    a = ref(img)
    random.seed(1)
    torch.manual_seed(1)
    b = mine(img)
    assert a.shape == b.shape == (3, 32, 32) and torch.allclose(a, b, atol=1e-5)


def test_in_process_loading_leaves_the_global_rng_alone(four):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    b = build_loader(str(four), Proc(), batch_size=5, workers=0, train=True, world=(0, 1), data_cfg=cfg())
    list(b)
    assert torch.equal(torch.rand(3), expected)


class NiceProc(Proc):
    """Records the nice value and scheduling policy of the process that prepares each sample."""

    def __call__(self, sample):
        return {**super().__call__(sample), "nice": torch.tensor(os.nice(0)),
                "policy": torch.tensor(os.sched_getscheduler(0))}


@pytest.mark.parametrize("priority", ["normal", "low", "idle"])
def test_loader_workers_run_at_the_asked_priority(four, priority):
    """CPU training lowers its loader workers' priority (mmfm.data.workers.lower_priority): they decode while
    the compute threads wait instead of preempting them. idle is SCHED_IDLE, low is nice 19; the training
    process itself keeps its own."""
    base, policy = os.nice(0), os.sched_getscheduler(0)
    b = build_loader(str(four), NiceProc(), batch_size=5, workers=1, train=True, world=(0, 1), data_cfg=cfg(),
                     worker_priority=priority)
    seen = {(int(n), int(p)) for batch in b for n, p in zip(batch["nice"], batch["policy"])}
    want = {"normal": (base, policy), "low": (19, policy), "idle": (base, os.SCHED_IDLE)}[priority]
    assert seen == {want} and (os.nice(0), os.sched_getscheduler(0)) == (base, policy)


def test_auto_priority_is_idle_only_for_one_cpu_process():
    from mmfm.data.workers import resolve_priority
    assert resolve_priority("auto", "cpu", 1) == "idle"
    assert resolve_priority("auto", "cpu", 2) == "normal"      # starved workers would stall the other ranks
    assert resolve_priority("auto", "cuda", 1) == "normal"
    assert resolve_priority("low", "cuda", 4) == "low"
    with pytest.raises(ValueError, match="worker_priority"):
        resolve_priority("lowest", "cpu")
