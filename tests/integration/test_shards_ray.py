"""`--distributor ray` on the run's one Ray cluster (`ray start --head` on 127.0.0.1, 2 CPUs, tests/ray_head.py)
against real HTTP servers: the same samples, keys, image bytes, captions and splits as the one-machine build; --resume re-runs only the
unfinished partitions; a SIGKILLed worker's partition is retried by Ray."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F
from tests.integration.s3_helpers import moto_s3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
N = 60
OPTS = ["image.size=16", "shard_size=7", "download.retries=0", "download.timeout=5", "download.threads=2",
        "download.allow_private_urls=true", "holdout=0.3", "distributor.partition_rows=20"]
IMAGES = {f"{i}.jpg": F.photo(30, 24, seed=i) for i in range(N)}


def _table(tmp_path, url) -> Path:
    rows = []
    for i in range(N):
        if i % 17 == 4:
            image = f"{url}/404"                       # failures in several partitions
        elif i % 13 == 9 or i == 45:
            image = f"{url}/img/{i % 13}.jpg"           # duplicates of an earlier image; 45: of row 6, two partitions back
        else:
            image = f"{url}/img/{i}.jpg"
        rows.append(json.dumps({"image": image, "caption": f"photo number {i}"}))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _opts(table, *extra):
    return resolve_options(None, OPTS + list(extra), {"source": {"path": str(table)}})


def _samples(folder: Path) -> dict:
    out = {}
    for tar in sorted(folder.glob("shard-*.tar")):
        for s in iter_samples(tar):
            out[s["__key__"]] = (s["txt"], s["jpg"], s["json"])
    return out


def _same_as_local(out: Path, ref: Path) -> None:
    for split in ("train", "heldout"):
        got, want = read_manifest(out / split), read_manifest(ref / split)
        assert got["total_samples"] == want["total_samples"] > 0
        assert got["failures"] == want["failures"]
        assert _samples(out / split) == _samples(ref / split)     # keys, captions, image bytes, metadata
        listed = {s["name"] for s in got["shards"]}
        assert listed == {p.name for p in (out / split).glob("shard-*.tar")}
        assert [json.loads(x)["index"] for x in (out / split / "failures.jsonl").read_text().splitlines()] == \
               [json.loads(x)["index"] for x in (ref / split / "failures.jsonl").read_text().splitlines()]


def _reference(tmp_path, table):
    ref = tmp_path / "ref"
    build(_opts(table, "workers=0"), ref, progress=False)
    return ref


def test_cli_joins_a_cluster_started_with_ray_start_and_writes_to_s3(ray_head, tmp_path):
    """`ray start --head` (as a user would, on 127.0.0.1: the run's one cluster, tests/ray_head.py), then
    `mmfm shards build --ray-address --out s3://...` (a moto S3 server on 127.0.0.1)."""
    with moto_s3(port=ray_head.s3_port) as (bucket, _):
        _cli_build_on_cluster(tmp_path, f"{bucket}/shards", ray_head.address)
        import fsspec

        fsspec.filesystem("s3").get(f"{bucket}/shards/", str(tmp_path / "got"), recursive=True)
    assert not list((tmp_path / "got").rglob("*.partial"))
    _same_as_local(tmp_path / "got", tmp_path / "ref")


def _cli_build_on_cluster(tmp_path, out: str, address: str) -> None:
    from tests.ray_head import ENV

    with F.FaultServer(IMAGES) as server:
        table = _table(tmp_path, server.url)
        _reference(tmp_path, table)            # tmp_path/ref, compared by the caller
        sets = [a for o in OPTS for a in ("--set", o)]
        cmd = [sys.executable, "-m", "mmfm", "shards", "build", str(table), "--out", out,
               "--distributor", "ray", "--ray-address", address, "--no-progress", *sets]
        res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **ENV), capture_output=True, text=True,
                             timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "samples in" in res.stdout


def test_ray_build_equals_local_build_and_resume_reruns_only_unfinished(ray_cluster, tmp_path):
    with F.FaultServer(IMAGES) as server:
        table = _table(tmp_path, server.url)
        ref = _reference(tmp_path, table)
        out = tmp_path / "out"
        t0 = time.monotonic()
        ms = build(_opts(table, "distributor.kind=ray"), out, progress=False)
        print(f"ray build {time.monotonic() - t0:.1f}s")
        _same_as_local(out, ref)
        n404 = sum(1 for i in range(N) if i % 17 == 4)
        assert sum(m["failures"].get("http_404", 0) for m in ms.values()) == n404
        assert sum(m["failures"].get("duplicate", 0) for m in ms.values()) == 4   # 22, 35, 48 (of row 9), 45 (of row 6)
        assert sorted(p.name for p in out.glob("ray-part-*.json")) == [f"ray-part-{p:06d}.json" for p in range(3)]
        # partition 1 (rows 20..39, shard ids 3..5) was killed after one tar: no marker, a tar, a .partial
        (out / "ray-part-000001.json").unlink()
        marker1 = sorted((out / "train").glob("shard-00000[345].tar"))
        marker1[-1].rename(marker1[-1].with_name(marker1[-1].name + ".partial"))
        hits = dict(server.hits)
        ms2 = build(_opts(table, "distributor.kind=ray"), out, resume=True, progress=False)
        again = {p for p, n in server.hits.items() if n > hits.get(p, 0)}
    rerun = {f"/img/{i}.jpg" for i in range(20, 40) if i % 17 != 4 and i % 13 != 9} | {"/404", "/img/9.jpg"}
    assert again == rerun                     # only partition 1's rows were fetched again
    assert ms2["train"]["build"]["resumed"] is True
    assert not list(out.rglob("*.partial"))
    _same_as_local(out, ref)


def test_failures_jsonl_is_in_input_order_when_a_partition_ends_with_skipped_inputs(ray_cluster, tmp_path):
    """Partition 0 (rows 0..4) fills its two shards exactly, then skips row 4: no shard of that partition holds
    the record (it is the partition's tail). Partition 1 skips row 5 inside its shard. failures.jsonl lists row 4
    before row 5, as the local build does; the Ray build once listed every partition's tail after all the shards'
    records. The test above met that only when the holdout hash of its URLs (they hold the server's random port)
    put such a tail in a split: it failed once in a while, its failures.jsonl "lacking" row 38 at its place."""
    with F.FaultServer(IMAGES) as server:
        urls = [f"{server.url}/img/{i}.jpg" for i in range(4)] + [f"{server.url}/404"] * 2 + \
               [f"{server.url}/img/{i}.jpg" for i in (6, 7)]
        table = tmp_path / "rows.jsonl"
        table.write_text("".join(json.dumps({"image": u, "caption": f"photo number {i}"}) + "\n"
                                 for i, u in enumerate(urls)))
        opts = ["image.size=16", "shard_size=2", "download.retries=0", "download.timeout=5",
                "download.allow_private_urls=true", "distributor.partition_rows=5"]
        ref, out = tmp_path / "ref", tmp_path / "out"
        for folder, extra in ((ref, "workers=0"), (out, "distributor.kind=ray")):
            build(resolve_options(None, opts + [extra], {"source": {"path": str(table)}}), folder, progress=False)

    def failures(folder: Path) -> list[dict]:
        return [json.loads(x) for x in (folder / "failures.jsonl").read_text().splitlines()]
    assert [r["index"] for r in failures(ref)] == [4, 5]
    assert failures(out) == failures(ref)
    assert read_manifest(out)["failures"] == read_manifest(ref)["failures"] == {"http_404": 2}


def _ray_workers_of(pid: int, title: str) -> list[int]:
    """PIDs under process ``pid`` whose title (Ray sets ``ray::FUNCTION`` while a task runs) starts with ``title``."""
    parent, found = {}, []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if f.read().decode(errors="replace").startswith(title):
                    found.append(int(d))
        except OSError:
            continue

    def under(p: int) -> bool:
        while p > 1:
            if p == pid:
                return True
            p = parent.get(p, 0)
        return False
    return [p for p in found if under(p)]


def test_sigkilled_worker_is_retried(ray_cluster, ray_head, tmp_path):
    with F.FaultServer(IMAGES, delay=0.05) as server:
        table = _table(tmp_path, server.url)
        ref = _reference(tmp_path, table)
        hits = dict(server.hits)
        out, result = tmp_path / "out", {}

        def run():
            try:
                result["m"] = build(_opts(table, "distributor.kind=ray", "distributor.max_retries=2"), out,
                                    progress=False)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
                result["error"] = e
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # killed once it has fetched an image (killed earlier, a retry would fetch nothing twice: a flaky test)
        killed = _kill_first_partition_task(thread, ray_head.pid,
                                            ready=lambda: sum(server.hits.values()) > sum(hits.values()))
        thread.join(timeout=120)
        assert not thread.is_alive(), "the build did not finish"
        # a partition that ran twice fetched its images more often than the one-machine build did
        refetched = [p for p, n in server.hits.items() if p.startswith("/img/") and n - hits[p] > hits[p]]
    assert killed, "the build finished before a worker could be killed"
    assert "error" not in result, result.get("error")
    assert refetched                # the killed partition ran again: its images were downloaded twice
    _same_as_local(out, ref)


def _kill_first_partition_task(thread: threading.Thread, head_pid: int, ready=lambda: True) -> list[int]:
    """SIGKILL the first running partition task once ``ready()`` (e.g. it has fetched an image)."""
    deadline, killed = time.monotonic() + 60, []
    while not killed and thread.is_alive():
        assert time.monotonic() < deadline, "no partition task seen running"
        busy = _ray_workers_of(head_pid, "ray::process_partition")
        if busy and ready():
            os.kill(busy[0], signal.SIGKILL)
            killed.append(busy[0])
        time.sleep(0.02)
    return killed


def test_partition_failing_after_its_retries_stops_the_build_then_resume_finishes(ray_cluster, ray_head, tmp_path):
    from mmfm.data.shards.executor_ray import PartitionError

    with F.FaultServer(IMAGES, delay=0.05) as server:
        table = _table(tmp_path, server.url)
        ref = _reference(tmp_path, table)
        out, result = tmp_path / "out", {}

        def run():
            try:
                build(_opts(table, "distributor.kind=ray", "distributor.max_retries=0"), out, progress=False)
            except BaseException as e:  # noqa: BLE001 - checked in the test thread
                result["error"] = e
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        killed = _kill_first_partition_task(thread, ray_head.pid)
        thread.join(timeout=120)
        assert not thread.is_alive(), "the build did not stop"
        assert killed, "the build finished before a worker could be killed"
        assert isinstance(result.get("error"), PartitionError), result
        assert "failed after 0 retries" in str(result["error"]) and "--resume" in str(result["error"])
        assert not (out / "train" / "manifest.json").exists()
        build(_opts(table, "distributor.kind=ray"), out, resume=True, progress=False)
    _same_as_local(out, ref)


def test_empty_input_is_a_clear_error(ray_cluster, tmp_path):
    from mmfm.data.shards.build import EmptyBuildError

    table = tmp_path / "rows.jsonl"
    table.write_text("")
    with pytest.raises(EmptyBuildError, match="gave 0 inputs"):
        build(_opts(table, "distributor.kind=ray"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "build_args.json").exists()
