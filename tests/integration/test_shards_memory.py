"""The builder's memory does not grow with the dataset: dedup digests live in an on-disk sqlite index that
``--resume`` reopens, per-shard digests stay in the ``_stats.json`` files and every skipped input goes to its
shard's ``_failed.jsonl`` (no cap)."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.digests import DigestIndex
from mmfm.data.shards.recipes import resolve_options
from mmfm.data.shards.writer import ShardSink, encode_sample
from tests.fixtures.shards import factory as F

ROOT = Path(__file__).resolve().parents[2]
N = 90
OPTS = ["image.size=16", "shard_size=10", "download.retries=0", "download.timeout=5",
        "download.allow_private_urls=true", "workers=0"]


def _table(tmp_path, url):
    """Every 10th row from row 23 on repeats the image of 15 rows earlier: duplicates across shards and
    across the kill."""
    rows = [f"{url}/img/{i - 15 if i >= 20 and i % 10 == 3 else i}.jpg" for i in range(N)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"image": im, "caption": f"photo {i}"}) + "\n" for i, im in enumerate(rows)))
    return path


def _opts(table):
    return resolve_options(None, OPTS, {"source": {"path": str(table)}})


def _shards(m):
    return [(s["name"], s["samples"], s["sha256"]) for s in m["shards"]]


@pytest.mark.timeout(120)
def test_resume_reopens_the_dedup_index_instead_of_reloading_stats(tmp_path):
    images = {f"{i}.jpg": F.photo(20, 16, seed=i) for i in range(N)}
    with F.FaultServer(images, delay=0.03) as server:
        table = _table(tmp_path, server.url)
        ref = build(_opts(table), tmp_path / "ref", progress=False)[""]
        out = tmp_path / "out"
        sets = [a for o in OPTS for a in ("--set", o)]
        proc = subprocess.Popen([sys.executable, "-m", "mmfm", "shards", "build", str(table), "--out", str(out),
                                 "--no-progress", *sets], cwd=ROOT, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not (out / "shard-000004_stats.json").exists():
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "build made no progress"
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert not (out / "manifest.json").exists(), "the build finished before it was killed"
        assert (out / DigestIndex.NAME).is_file()
        fresh = tmp_path / "fresh"
        shutil.copytree(out, fresh)
        for p in fresh.glob(DigestIndex.NAME + "*"):
            p.unlink()            # as for an s3:// build (a new staging folder): rebuilt from the stats

        with sqlite3.connect(out / DigestIndex.NAME) as db:
            covered = db.execute("SELECT v FROM meta WHERE k = 'covered'").fetchone()[0]
        stripped = 0
        for p in sorted(out.glob("shard-*_stats.json")):
            stats = json.loads(p.read_text())
            if stats["input_end"] <= covered:     # the index holds these digests: resume must not need them
                stats.pop("image_sha256")
                p.write_text(json.dumps(stats))
                stripped += 1
        assert stripped >= 3, f"index covered only {covered} inputs"

        got = build(_opts(table), out, resume=True, progress=False)[""]
        got_fresh = build(_opts(table), fresh, resume=True, progress=False)[""]
    ndup = sum(1 for i in range(20, N) if i % 10 == 3)
    assert ref["failures"] == {"duplicate": ndup} and ref["total_samples"] == N - ndup
    for m in (got, got_fresh):
        assert m["failures"] == ref["failures"] and _shards(m) == _shards(ref)
    for folder in (tmp_path / "ref", out, fresh):
        assert not list(folder.glob(DigestIndex.NAME + "*")), "a finished build leaves no digest index"
        assert read_manifest(folder)["total_samples"] == N - ndup


def test_digest_index_batches_to_disk_and_forgets_replayed_inputs(tmp_path):
    index = DigestIndex(tmp_path, batch=2)
    digests = [f"{i:064x}" for i in range(5)]
    assert [index.add(d, i) for i, d in enumerate(digests)] == [True] * 5
    for i in range(5):
        index.seen(i)
    assert not index.add(digests[0], 5) and not index.add(digests[4], 6)   # on disk and still pending
    index.close()
    index = DigestIndex(tmp_path)
    assert index.covered == 5 and len(index) == 5
    index.restart_at(3)                        # inputs 3 and 4 will be replayed: their digests go
    assert index.covered == 3 and len(index) == 3
    assert index.add(digests[3], 3) and not index.add(digests[2], 3)
    index.absorb([[1, digests[1]], [4, digests[4]]])   # only pairs past `covered` are added
    assert len(index) == 5
    index.close()


def test_sink_keeps_only_light_stats_in_memory(tmp_path):
    sink = ShardSink(tmp_path, shard_size=4)
    for i in range(10):
        sink.note_failed({"index": 100 + i, "reason": "http_404"})
        sink.write(encode_sample({"__key__": f"{i:03d}", "png": F.photo(8, 8, seed=i, fmt="PNG"), "txt": "x"}),
                   image_hash=[i, f"{i:064x}"])
    shards = sink.close()
    assert [s["samples"] for s in shards] == [4, 4, 2]
    assert all("image_sha256" not in s and "failed_items" not in s for s in shards)
    on_disk = json.loads((tmp_path / "shard-000000_stats.json").read_text())
    assert [h[0] for h in on_disk["image_sha256"]] == [0, 1, 2, 3] and on_disk["failed"] == 4
    failed = [json.loads(x)["index"] for x in (tmp_path / "shard-000000_failed.jsonl").read_text().splitlines()]
    assert failed == [100, 101, 102, 103]


def test_every_skipped_input_is_listed_without_a_cap(tmp_path):
    """1100 inputs skipped in one shard: failures.jsonl (and so --retry-failures) lists each of them."""
    good = tmp_path / "good.jpg"
    good.write_bytes(F.photo(20, 16, seed=1))
    rows = [str(tmp_path / f"missing-{i}.jpg") for i in range(1100)] + [str(good)] + \
        [str(tmp_path / f"late-{i}.jpg") for i in range(3)]
    table = tmp_path / "rows.jsonl"
    table.write_text("".join(json.dumps({"image": r, "caption": "x"}) + "\n" for r in rows))
    m = build(resolve_options(None, ["workers=0", "image.size=8"], {"source": {"path": str(table)}}),
              tmp_path / "out", progress=False)[""]
    assert m["failures"] == {"file_not_found": 1103} and m["total_samples"] == 1
    failed = [json.loads(x)["index"] for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert failed == list(range(1100)) + [1101, 1102, 1103]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if "failed" in p.name) == ["shard-000000_failed.jsonl"]
