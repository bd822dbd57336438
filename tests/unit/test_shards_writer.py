"""write_shards / read_manifest: real tars read back with webdataset."""
import json
import os

import pytest
import webdataset as wds
from PIL import Image

from mmfm.data.shards import ShardError, read_manifest, write_shards


def _samples(n):
    for i in range(n):
        yield {"__key__": f"{i:06d}", "jpg": Image.new("RGB", (16, 16), (i * 10 % 255, 0, 0)),
               "txt": f"caption {i}", "json": {"i": i, "name": "é"}, "cls": i % 3}


@pytest.mark.parametrize("n,size,expected", [(25, 10, [10, 10, 5]), (20, 10, [10, 10]), (0, 10, [])])
def test_write_shards_counts_and_manifest(tmp_path, n, size, expected):
    m = write_shards(_samples(n), tmp_path, shard_size=size, classes=["a", "b", "c"], args={"src": "x"})
    assert [s["samples"] for s in m["shards"]] == expected
    assert m["total_samples"] == n and m["format"] == "mmfm-shards/1"
    assert read_manifest(tmp_path) == m
    names = sorted(os.listdir(tmp_path))
    assert not [x for x in names if x.endswith(".partial")]
    for s in m["shards"]:
        stats = json.loads((tmp_path / s["name"].replace(".tar", "_stats.json")).read_text())
        assert stats["sha256"] == s["sha256"] and stats["bytes"] == (tmp_path / s["name"]).stat().st_size
    if n:
        assert m["keys"] == {"cls": "label", "jpg": "image", "json": "metadata", "txt": "caption"}
        urls = [str(tmp_path / s["name"]) for s in m["shards"]]
        got = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
        assert [g["__key__"] for g in got] == [f"{i:06d}" for i in range(n)]
        assert got[3]["cls"] == 0 and got[4]["txt"] == "caption 4" and got[4]["json"]["name"] == "é"


def test_write_shards_is_deterministic(tmp_path):
    a = write_shards(_samples(12), tmp_path / "a", shard_size=5)
    b = write_shards(_samples(12), tmp_path / "b", shard_size=5)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_write_shards_rejects_bad_keys_and_existing_shards(tmp_path):
    with pytest.raises(ShardError, match="a.b"):
        write_shards([{"__key__": "a.b", "txt": "x"}], tmp_path / "k")
    write_shards(_samples(2), tmp_path / "e")
    with pytest.raises(ShardError, match="already holds shards"):
        write_shards(_samples(2), tmp_path / "e")


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ShardError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardError, match="expected 'mmfm-shards/1'"):
        read_manifest(tmp_path)
