"""Stopping and resuming in real processes: SIGTERM reaching one torchrun rank stops every rank within a step
(with a checkpoint), ranks that restore different steps (a node that cannot see the checkpoint) fail clearly,
and Ctrl-C on `mmfm train` saves a checkpoint and prints the command that continues the run."""
import json
import select
import signal
import subprocess
import textwrap
import time

import pytest

from train_helpers import PY, ROOT, env, make_shards, run, write_config

WORKER = textwrap.dedent("""
    import json, os, signal, sys
    from mmfm.config import ConfigError, load_experiment
    from mmfm.train.builder import build_run
    from mmfm.train.trainer import Trainer
    rank = int(os.environ["RANK"])
    cfg = load_experiment(sys.argv[1])
    if rank == 1 and len(sys.argv) > 2:
        cfg.train.output_dir = sys.argv[2]          # a node whose disk does not hold the checkpoint
    def term_rank1(task, step):
        if rank == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)     # only this rank hears it
        return {}
    r = build_run(cfg)
    try:
        result = Trainer(cfg, r.task, r.train, r.val, [term_rank1]).fit()
    except ConfigError as e:
        print(f"rank {rank} ERROR {e}", flush=True)
        sys.exit(2)
    with open(os.path.join(os.path.dirname(sys.argv[1]), f"result{rank}.json"), "w") as f:
        json.dump({k: result[k] for k in ("step", "stopped") if k in result}, f)
""")


def torchrun_script(tmp_path, *args, timeout=240):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args],
               timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_signal_on_one_rank_stops_all_and_resume_checks_every_rank_restored_it(tmp_path):
    shards = make_shards(tmp_path / "shards", 16, 4)
    cfg = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", data={"batch_size": 2},
                       train_cfg={"max_steps": 8, "ckpt_every_minutes": 1e-6, "log_every": 100,
                                  "dist_timeout_minutes": 0.5},
                       eval={"every_steps": 1})
    proc = torchrun_script(tmp_path, str(cfg))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    results = [json.loads((tmp_path / f"result{rank}.json").read_text()) for rank in (0, 1)]
    stop = results[0]["step"]
    assert stop in (2, 3) and results[1]["step"] == stop, results     # signalled during step 2: within a step
    assert all("stopped by signal SIGTERM" in r["stopped"] for r in results), results
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").resolve().name == f"step_{stop:08d}"
    assert (ckpts / "step_00000001").is_dir()           # ckpt_every_minutes on rank 0's clock, agreed by all

    import yaml
    data = yaml.safe_load(cfg.read_text())
    data["train"]["resume"] = "latest"
    cfg.write_text(yaml.safe_dump(data))
    for rank in (0, 1):
        (tmp_path / f"result{rank}.json").unlink()
    proc = torchrun_script(tmp_path, str(cfg), str(tmp_path / "node1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not list(tmp_path.glob("result*.json")), out[-3000:]
    assert f"rank 1 ERROR train.resume: the processes restored different steps (0 to {stop})" in out, out[-3000:]
    assert "storage that every node reads" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_on_mmfm_train_saves_and_prints_the_resume_command(tmp_path):
    shards = make_shards(tmp_path / "shards", 16, 8)
    cfg = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", data={"batch_size": 4},
                       train_cfg={"max_steps": 10000})
    proc = subprocess.Popen([PY, "-m", "mmfm", "train", str(cfg), "--set", "train.lr=1e-4"], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.monotonic() + 180, ""
        while "step 2/10000" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen[-3000:]
            if select.select([proc.stderr], [], [], 1.0)[0]:
                seen += proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, (seen + err)[-3000:]
    assert "stopped by signal SIGINT" in err
    assert f"mmfm train {cfg} --set train.lr=1e-4 --resume latest" in err
    assert (tmp_path / "run" / "checkpoints" / "latest").is_dir()
