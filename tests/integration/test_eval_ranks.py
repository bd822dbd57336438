"""Evaluation under torchrun (2 gloo ranks) scores every sample once and equals one process: the validation loss
of `mmfm train` (uneven batch counts per rank, a short last batch per reader), and the zero-shot / retrieval
hooks, which share the work over the ranks and return the same metrics on every rank."""
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from train_helpers import PY, make_shards, png, run, write_config

HERE = Path(__file__).parent


def _zeroshot_folder(root: Path) -> Path:
    n = 0
    for c, count in zip(("ant", "bee", "cat", "dog", "eel"), (3, 2, 2, 2, 2)):     # 11 images, 5 classes
        (root / c).mkdir(parents=True)
        for i in range(count):
            Image.open(io.BytesIO(png(n))).save(root / c / f"{i}.png")
            n += 1
    return root


def _retrieval_data(root: Path) -> tuple[str, str]:
    from mmfm.data.shards import write_shards
    caps = [[f"colour {i}", f"thing {i % 4}", f"item {i}"][: 1 + i % 3] for i in range(12)]
    write_shards(({"__key__": f"r{i:03d}", "png": png(i + 50), "txt": caps[i][0], "json": {"captions": caps[i]}}
                  for i in range(12)), root / "shards", shard_size=5)
    (root / "imgs").mkdir()
    lines = []
    for i in range(12):
        (root / "imgs" / f"{i}.png").write_bytes(png(i + 50))
        lines.append(json.dumps({"image": f"imgs/{i}.png", "captions": caps[i]}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return str(root / "shards"), str(root / "pairs.jsonl")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_hooks_share_the_work_and_equal_one_process(tmp_path):
    sys.path.insert(0, str(HERE))
    from eval_hooks_ranks import build, run_hooks

    from mmfm.eval import retrieval_evaluate, zeroshot_classify
    folder = str(_zeroshot_folder(tmp_path / "zs"))
    shards, table = _retrieval_data(tmp_path / "ret")
    (tmp_path / "out").mkdir()
    proc = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(HERE / "eval_hooks_ranks.py"), folder, shards, table, str(tmp_path / "out")], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]

    task, hooks = build(folder, shards, table)
    one = run_hooks(task, hooks)                              # the same hooks in one process
    zs = zeroshot_classify(task.model, folder, templates="simple", workers=0, use_cache=False, progress=False)
    ret = retrieval_evaluate(task.model, shards, workers=0, progress=False)
    ret7 = retrieval_evaluate(task.model, table, workers=0, progress=False, max_samples=7)
    for r in ranks:
        assert r["train_mode"]
        assert len(r["results"]) == len(one) == 3
        for got, want in zip(r["results"], one):
            assert got.keys() == want.keys() and got == pytest.approx(want, abs=1e-6)
        assert r["results"][0] == pytest.approx({f"zeroshot/{k}": zs.metrics[k] for k in
                                                 ("top1", "top5", "mean_per_class_recall", "macro_f1")}, abs=1e-6)
        assert r["results"][1] == pytest.approx({f"retrieval/{k}": v for k, v in ret.metrics.items()
                                                 if "_R@" in k or k == "mean_recall"}, abs=1e-6)
        assert r["results"][2] == pytest.approx({f"retrieval/{k}": v for k, v in ret7.metrics.items()
                                                 if "_R@" in k or k == "mean_recall"}, abs=1e-6)
    # each rank encoded its share only: 11 zero-shot + 12 shard + 7 table images = 30 in all
    assert sorted(r["encoded"] for r in ranks) == [14, 16]
    assert one[1]["retrieval/image_to_text_R@10"] > one[1]["retrieval/image_to_text_R@1"]   # not degenerate


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_rank_validation_scores_every_sample_once(tmp_path):
    from mmfm.config import load_experiment
    from mmfm.tasks import build_task
    from mmfm.train.builder import build_loaders
    train = make_shards(tmp_path / "train", 24, 6)
    val = make_shards(tmp_path / "val", 26, 10, prefix="v")       # 4 readers get 7, 7, 6, 6 samples
    cfg_path = write_config(tmp_path / "c.yaml", train, tmp_path / "out",
                            data={"batch_size": 6, "workers": 2, "val": [{"path": val}]},
                            train_cfg={"max_steps": 1, "dist_timeout_minutes": 1},
                            eval={"at_start": True})
    proc = run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmfm", "train",
                str(cfg_path)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r["step"] == 0 and "val/loss" in r)

    cfg = load_experiment(cfg_path)                      # what each rank scored, one rank after the other
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg).eval()
    keys, total, batches = [], 0.0, []
    with torch.no_grad():
        for rank in range(2):
            val_loader = build_loaders(cfg, task, rank, 2)[1]
            batches.append(0)
            for batch in val_loader:
                keys += batch["key"]
                total += task(batch)["loss"].item() * len(batch["key"])
                batches[-1] += 1
    assert sorted(keys) == [f"v{i:04d}" for i in range(26)] and batches == [4, 2]   # uneven across ranks
    assert start["val/samples"] == 26
    assert start["val/loss"] == pytest.approx(total / 26, rel=1e-5)
