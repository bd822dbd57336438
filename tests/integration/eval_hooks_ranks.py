"""Run by test_eval_ranks.py under torchrun (gloo): every rank builds the same tiny CLIP task, calls the eval
hooks and writes what they returned and how many images its model encoded to OUT/rank<R>.json."""
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def build(folder: str, shards: str, table: str):
    """The task and hooks (the test builds the same ones in one process); deterministic weights."""
    from mmfm.config import load_experiment
    from mmfm.eval.hooks import RetrievalHook, build_eval_hooks
    from mmfm.tasks import build_task
    cfg = load_experiment(data={"model": {"name": "tiny"}, "eval": {
        "zeroshot_folder": folder, "retrieval_data": shards, "batch_size": 4, "workers": 2}})
    torch.manual_seed(0)
    task = build_task(cfg)
    hooks = build_eval_hooks(cfg) + [RetrievalHook(table, max_samples=7, batch_size=3)]
    return task, hooks


def run_hooks(task, hooks) -> list[dict]:
    return [hook(task, 0) for hook in hooks]


def main(folder: str, shards: str, table: str, out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    task, hooks = build(folder, shards, table)
    model, encoded = task.model, [0]
    encode = model.encode_image

    def counting(images, **kw):
        encoded[0] += images.shape[0]
        return encode(images, **kw)
    model.encode_image = counting
    task.train()
    results = run_hooks(task, hooks)
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps({
        "results": results, "encoded": encoded[0], "train_mode": task.training and task.model.training}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
