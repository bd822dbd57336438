"""A run killed with SIGKILL and resumed with `--resume latest` ends with the same weights as a run that
was never killed, and consumes exactly the same batches (no sample repeated, none skipped)."""
import json
import signal
import textwrap

import pytest
import torch

from train_helpers import PY, load_weights, make_shards, max_diff, run, write_config

KILLER = textwrap.dedent("""
    import os, signal, sys
    from mmfm.config import load_experiment
    from mmfm.train.builder import build_run
    from mmfm.train.trainer import Trainer
    cfg = load_experiment(sys.argv[1])
    kill_at = int(sys.argv[2])
    run = build_run(cfg)
    def kill(task, step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return {}
    Trainer(cfg, run.task, run.train, run.val, [kill]).fit()
""")


class Recorder(torch.nn.Module):
    """Records the sample keys of every batch the trainer feeds the task."""

    def __init__(self, task, seen):
        super().__init__()
        self.inner, self.model, self.seen = task, task.model, seen

    def forward(self, batch):
        self.seen.append(list(batch["key"]))
        return self.inner(batch)


def fit_recording(cfg_path):
    from mmfm.config import load_experiment
    from mmfm.train.builder import build_run
    from mmfm.train.trainer import Trainer
    cfg = load_experiment(cfg_path)
    r = build_run(cfg)
    seen = []
    Trainer(cfg, Recorder(r.task, seen), r.train, r.val, r.hooks).fit()
    return seen


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    shards = make_shards(tmp_path / "shards", 48, 12)     # 4 shards; 2 workers; 12 batches per epoch
    common = dict(data={"batch_size": 4, "workers": 2},
                  train_cfg={"max_steps": 14, "ckpt_every_steps": 5, "warmup_steps": 3},
                  eval={"every_steps": 1})
    ref_cfg = write_config(tmp_path / "ref.yaml", shards, tmp_path / "ref", **common)
    cfg = write_config(tmp_path / "run.yaml", shards, tmp_path / "run", **common)

    killed = run([PY, "-c", KILLER, str(cfg), "7"], timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").resolve().name == "step_00000005" and not (ckpts / "step_00000010").exists()

    reference = fit_recording(ref_cfg)                       # never killed
    import yaml
    data = yaml.safe_load(cfg.read_text())
    data["train"]["resume"] = "latest"
    cfg.write_text(yaml.safe_dump(data))
    resumed = fit_recording(cfg)

    assert len(reference) == 14 and resumed == reference[5:]  # same batches, in order, after step 5
    epoch0 = [k for b in reference[:12] for k in b]
    assert len(set(epoch0)) == 48                              # an epoch repeats no sample
    w_ref = load_weights(tmp_path / "ref" / "checkpoints" / "latest")
    w_run = load_weights(ckpts / "latest")
    assert (ckpts / "latest").resolve().name == "step_00000014"
    assert max_diff(w_ref, w_run) < 1e-5
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, 15))       # killed after 7, resumed from 5: steps 6 and 7 listed once
