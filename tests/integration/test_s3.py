"""fsspec URLs end to end against a real S3 API (moto's server on 127.0.0.1): build -> train -> SIGKILL -> resume ->
evaluate with every path an ``s3://`` URL; shards streamed through a proxy that drops connections mid-shard
give every sample once; a URL scheme no installed filesystem handles is an error, not a local folder."""
import json
import signal
import time

import pytest
import yaml

from tests.integration.s3_helpers import DropProxy, endpoint, moto_s3
from train_helpers import PY, make_shards, png, run


def _upload_table(bucket: str, n: int) -> str:
    from mmfm.data import fs
    for i in range(n):
        fs.write_bytes(f"{bucket}/raw/img/{i:03d}.png", png(i))
    rows = "".join(json.dumps({"image": f"img/{i:03d}.png", "caption": f"colour {i % 6} item {i % 3}"}) + "\n"
                   for i in range(n))
    fs.write_bytes(f"{bucket}/raw/table.jsonl", rows)
    return f"{bucket}/raw/table.jsonl"


def test_unknown_scheme_is_an_error_not_a_local_folder(tmp_path, monkeypatch):
    from mmfm.config import ConfigError
    from mmfm.data.shards.build import build
    from mmfm.data.shards.options import BuildOptions
    from mmfm.train.run_folder import check_output_dir

    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"{i}.png").write_bytes(png(i))
    (tmp_path / "in" / "t.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "caption": "a red square"})
                                                     + "\n" for i in range(2)))
    monkeypatch.chdir(tmp_path)
    opts = BuildOptions(workers=0)
    opts.source.path = str(tmp_path / "in" / "t.jsonl")
    with pytest.raises(ConfigError, match=r"--out: nosuchfs://bucket/x: no installed filesystem handles"):
        build(opts, "nosuchfs://bucket/x", progress=False)
    with pytest.raises(ConfigError, match=r"train.output_dir: nosuchfs://b/run: no installed filesystem"):
        check_output_dir("nosuchfs://b/run")
    assert not (tmp_path / "nosuchfs:").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dropped_connections_mid_shard_lose_and_repeat_no_sample(tmp_path, monkeypatch, caplog):
    import fsspec

    from mmfm.data.shards import ShardError
    from mmfm.data.sources import read_samples, resolve_source

    monkeypatch.setenv("MMFM_READ_BACKOFF", "0.05")
    make_shards(tmp_path / "shards", 40, 10)                  # 4 tars of ~30 KB
    with moto_s3() as (bucket, url):
        fsspec.filesystem("s3").put(str(tmp_path / "shards"), f"{bucket}/shards", recursive=True)
        src = resolve_source(f"{bucket}/shards")
        urls = [s.url for s in src.shards]
        expected = [s["__key__"] for s in read_samples(urls)]
        assert src.samples == 40 and len(expected) == 40
        host, port = url.rsplit("//", 1)[1].split(":")
        proxy = DropProxy((host, int(port)), drops=12, after=3000)   # more than s3fs's own retries absorb
        try:
            with endpoint(proxy.url), caplog.at_level("WARNING", "mmfm.data"):
                got = [s["__key__"] for s in read_samples(urls)]
            assert proxy.dropped == 12
            assert got == expected                              # none lost, none repeated, same order
            assert any("retry" in r.getMessage() for r in caplog.records)
            always = DropProxy((host, int(port)), drops=10 ** 9, after=3000)
            t0 = time.monotonic()
            with endpoint(always.url), pytest.raises(ShardError, match=r"shard-000000.tar .*after 5 retries"):
                list(read_samples(urls))
            assert time.monotonic() - t0 < 60                   # bounded
            always.close()
        finally:
            proxy.close()


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from mmfm.config import load_experiment
from mmfm.train.builder import build_run
from mmfm.train.trainer import Trainer
cfg = load_experiment(sys.argv[1])
run = build_run(cfg)
def kill(task, step):
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return {}
Trainer(cfg, run.task, run.train, run.val, [kill]).fit()
"""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_s3_build_train_kill_resume_evaluate(tmp_path):
    from mmfm.data import fs
    with moto_s3() as (bucket, _):
        table = _upload_table(bucket, 32)
        shards, out = f"{bucket}/shards", f"{bucket}/runs/clip"
        built = run([PY, "-m", "mmfm", "shards", "build", table, "--out", shards, "--shard-size", "8",
                     "--workers", "0", "--no-progress"], timeout=180)
        assert built.returncode == 0, built.stderr[-3000:]
        names = fs.listing(shards)
        assert {"manifest.json", "shard-000003.tar", "shard-000003_stats.json"} <= set(names)
        assert json.loads(fs.read_text(f"{shards}/manifest.json"))["total_samples"] == 32
        assert not any(n.endswith(".partial") for n in names)

        cfg = {"model": {"name": "tiny"},
               "data": {"train": [{"path": shards}], "batch_size": 4, "workers": 0, "shuffle_buffer": 8},
               "train": {"output_dir": out, "max_steps": 6, "ckpt_every_steps": 2, "warmup_steps": 2,
                         "lr": 1e-3, "log_every": 1, "progress": False, "tensorboard": False},
               "eval": {"every_steps": 1}}
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        killed = run([PY, "-c", KILL_AFTER_CHECKPOINT, str(path)], timeout=180)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert fs.read_text(f"{out}/checkpoints/latest").strip() == "step_00000002"

        resumed = run([PY, "-m", "mmfm", "train", str(path), "--resume", "latest"], timeout=180)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from" in resumed.stderr and "step 2" in resumed.stderr
        assert fs.read_text(f"{out}/checkpoints/latest").strip() == "step_00000006"
        rows = [json.loads(x) for x in fs.read_text(f"{out}/metrics.jsonl").splitlines()]
        assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 7))   # 3 trained twice, listed once

        metrics = tmp_path / "retrieval.json"
        ev = run([PY, "-m", "mmfm", "retrieval", shards, "--model", out, "--out", str(metrics), "--quiet"],
                 timeout=180)
        assert ev.returncode == 0, ev.stderr[-3000:]
        result = json.loads(metrics.read_text())
        assert result["n_images"] == 32 and result["data"] == shards
