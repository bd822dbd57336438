"""The local build's opt-in profile (MMFM_SHARDS_PROFILE) and how it hands out work: quarter chunks at the tail."""
import json

from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.executor_local import _chunks
from mmfm.data.shards.plan import CHUNK
from mmfm.data.shards.profile import ENV
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F


def test_tail_goes_out_in_quarter_chunks():
    sizes = [len(c) for c in _chunks(((i, {}) for i in range(300)), 300, workers=2)]
    # full chunks while more than 2 * workers chunks' worth remain (heads 0..160), then quarters to the end
    assert CHUNK == 32 and sizes == [32] * 6 + [8] * 13 + [4]
    assert [len(c) for c in _chunks(((i, {}) for i in range(70)), None, workers=2)] == [CHUNK, CHUNK, 6]


def test_profile_records_workers_queue_and_parent_sections(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:03d}.jpg").write_bytes(F.photo(96, 64, seed=i))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"image": str(folder / f"{i:03d}.jpg"),
                                                             "caption": f"photo {i}"}) + "\n" for i in range(40)))
    prof = tmp_path / "prof.json"
    monkeypatch.setenv(ENV, str(prof))
    opts = resolve_options(None, ["image.size=32", "shard_size=16", "workers=2"],
                           {"source": {"path": str(tmp_path / "rows.jsonl")}})
    build(opts, tmp_path / "out", progress=False)
    assert read_manifest(tmp_path / "out")["total_samples"] == 40
    data = json.loads(prof.read_text())
    assert data["timeline"] and all(len(row) == 6 for row in data["timeline"])
    assert max(len(row[5]) for row in data["timeline"]) == 2                  # both workers sampled
    assert {"wait for next result in order", "write sample (incl. closing shards)"} <= set(data["sections"])
    text = prof.with_suffix(".txt").read_text()
    assert "worker 1" in text and "parent sections" in text and "timeline" in text
