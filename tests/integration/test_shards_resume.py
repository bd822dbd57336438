"""SIGKILL a real `mmfm shards build` mid-build, then `--resume`: exactly the shards of an uninterrupted build."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F

ROOT = Path(__file__).resolve().parents[2]
N = 120
OPTS = ["image.size=24", "shard_size=10", "download.retries=0", "download.timeout=5",
        "download.allow_private_urls=true"]   # the server is on 127.0.0.1


def _table(tmp_path, url):
    lines = []
    for i in range(N):
        if i % 23 == 5:
            image = f"{url}/404"                       # failures on both sides of the kill
        elif i % 31 == 7:
            image = f"{url}/img/{i - 1}.jpg"           # a duplicate of the previous image
        else:
            image = f"{url}/img/{i}.jpg"
        lines.append(json.dumps({"image": image, "caption": f"photo number {i}"}))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cmd(table, out, *extra):
    sets = [a for o in OPTS for a in ("--set", o)]
    return [sys.executable, "-m", "mmfm", "shards", "build", str(table), "--out", str(out), "--workers", "2",
            "--threads", "1", "--no-progress", *sets, *extra]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    images = {f"{i}.jpg": F.photo(40, 30, seed=i) for i in range(N)}
    with F.FaultServer(images, delay=0.02) as server:
        table = _table(tmp_path, server.url)
        t0 = time.monotonic()
        ref = build(resolve_options(None, OPTS + ["workers=0"], {"source": {"path": str(table)}}),
                    tmp_path / "ref", progress=False)[""]
        print(f"reference build {time.monotonic() - t0:.1f}s")
        out = tmp_path / "out"
        t0 = time.monotonic()
        proc = subprocess.Popen(_cmd(table, out), cwd=ROOT, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while not (out / "shard-000003_stats.json").exists():
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "build made no progress"
                time.sleep(0.01)
            print(f"killed after {time.monotonic() - t0:.1f}s")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)      # the orphaned forkserver and workers
            except ProcessLookupError:
                pass
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "manifest.json").exists(), "the build finished before it was killed"
        done = sorted(p.name for p in out.glob("shard-*.tar"))
        assert 4 <= len(done) < len(ref["shards"])

        t0 = time.monotonic()
        res = subprocess.run(_cmd(table, out, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        print(f"resume {time.monotonic() - t0:.1f}s")
    got = read_manifest(out)
    strip = lambda m: [(s["name"], s["samples"], s["sha256"]) for s in m["shards"]]  # noqa: E731
    assert strip(got) == strip(ref)                      # byte-identical tars, same boundaries
    n404 = sum(1 for i in range(N) if i % 23 == 5)
    ndup = sum(1 for i in range(N) if i % 31 == 7 and i % 23 != 5)
    assert got["total_samples"] == ref["total_samples"] == N - n404 - ndup
    assert got["failures"] == ref["failures"] == {"http_404": n404, "duplicate": ndup}
    assert got["build"]["resumed"] is True
    assert not list(out.glob("*.partial"))
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["index"] for f in failures] == [json.loads(x)["index"] for x in
                                              (tmp_path / "ref" / "failures.jsonl").read_text().splitlines()]
