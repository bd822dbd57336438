"""Retrieval on real shards and on CSV/JSONL (several captions per image, a corrupt image), the in-training
eval hooks, and a real ``mmfm train`` run whose metrics log carries the zero-shot and retrieval results."""
import csv
import io
import json

import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError, load_experiment
from mmfm.eval.hooks import build_eval_hooks
from mmfm.eval.retrieval import recall_at_k, retrieval_evaluate

N = 12


def _png(i: int) -> bytes:
    g = torch.Generator().manual_seed(i)
    buf = io.BytesIO()
    Image.fromarray((torch.rand(36, 40, 3, generator=g) * 255).byte().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _captions(i: int) -> list[str]:
    return [f"a picture number {i}", f"item {i % 4} in colour {i % 3}", f"photo {i}"][: 1 + i % 3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mmfm.data.shards import write_shards
    from mmfm.models import build_model, save_pretrained
    d = tmp_path_factory.mktemp("ret")
    write_shards(({"__key__": f"s{i:03d}", "png": _png(i), "txt": _captions(i)[0],
                   "json": {"captions": _captions(i)}} for i in range(N)), d / "shards", shard_size=5)
    (d / "imgs").mkdir()
    rows = []
    for i in range(N):
        (d / "imgs" / f"{i}.png").write_bytes(_png(i))
        rows += [{"filepath": f"imgs/{i}.png", "caption": c} for c in _captions(i)]
    with open(d / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filepath", "caption"])
        w.writeheader()
        w.writerows(rows)
    torch.manual_seed(0)
    cfg = load_experiment(data={"model": {"name": "tiny"}})
    save_pretrained(build_model(cfg.model), cfg, d / "ckpt")
    return d


def test_shards_and_csv_agree_with_direct_embeddings(data):
    import mmfm
    kw = dict(workers=0, batch_size=5, progress=False)
    from_shards = retrieval_evaluate(str(data / "ckpt"), str(data / "shards"), **kw)
    from_csv = retrieval_evaluate(str(data / "ckpt"), str(data / "pairs.csv"), **kw)
    model = mmfm.load(str(data / "ckpt"))
    caps = [c for i in range(N) for c in _captions(i)]
    owner = torch.tensor([i for i in range(N) for _ in _captions(i)])
    direct = recall_at_k(model.embed_images([Image.open(io.BytesIO(_png(i))) for i in range(N)]),
                         model.embed_texts(caps), owner)
    for key, value in direct.items():
        assert from_shards.metrics[key] == pytest.approx(value, abs=1e-6), key
        assert from_csv.metrics[key] == pytest.approx(value, abs=1e-6), key
    shards_meta, csv_meta = from_shards.meta, from_csv.meta
    assert shards_meta["n_images"] == N and shards_meta["n_captions"] == len(caps) == csv_meta["n_captions"]
    assert shards_meta["format"] == "shards" and csv_meta["format"] == "csv"
    assert direct["image_to_text_R@10"] > direct["image_to_text_R@1"]        # not a degenerate model


def test_corrupt_image_skipped_and_jsonl_captions(data, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    lines = [{"image": str(data / "imgs" / f"{i}.png"), "captions": _captions(i)} for i in range(4)]
    lines.append({"image": str(tmp_path / "bad.png"), "captions": ["never seen"]})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    m = retrieval_evaluate(str(data / "ckpt"), str(tmp_path / "d.jsonl"), workers=0, progress=False,
                           ks=(1, 5)).summary()
    assert m["n_images"] == 4 and m["n_skipped"] == 1 and m["skipped"][0]["path"].endswith("bad.png")
    assert m["n_captions"] == sum(len(_captions(i)) for i in range(4))
    assert m["text_to_image_R@5"] == 1.0                          # 4 images: top-5 always holds the right one
    with pytest.raises(ConfigError, match="retrieval data not found"):
        retrieval_evaluate(str(data / "ckpt"), str(tmp_path / "nope.csv"))


def test_retrieval_cli(data, tmp_path, capsys):
    from mmfm.cli import main as cli
    rc = cli(["retrieval", "--model", str(data / "ckpt"), str(data / "shards"), "--workers", "0", "--quiet",
              "--out", str(tmp_path / "r.json"), "--max-samples", "7"])
    assert rc == 0
    m = json.loads((tmp_path / "r.json").read_text())
    assert m["n_images"] == 7 and set(m) >= {"image_to_text_R@1", "text_to_image_R@10", "backend", "data"}
    assert "image_to_text: R@1" in capsys.readouterr().out


def _zs_folder(root):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.open(io.BytesIO(_png(i + (c == "dog") * 10))).save(root / c / f"{i}.png")
    return root


def test_hooks_return_metrics_and_keep_train_mode(data, tmp_path):
    from mmfm.tasks import build_task
    folder = _zs_folder(tmp_path / "zs")
    cfg = load_experiment(data={"model": {"name": "tiny"},
                                "eval": {"zeroshot_folder": str(folder), "retrieval_data": str(data / "pairs.csv")}})
    hooks = build_eval_hooks(cfg)
    task = build_task(cfg)
    task.train()
    out = {}
    for hook in hooks:
        out.update(hook(task, 3))
    assert set(out) >= {"zeroshot/top1", "zeroshot/mean_per_class_recall", "retrieval/image_to_text_R@1",
                        "retrieval/text_to_image_R@10"}
    assert task.training and task.model.training
    bad = load_experiment(data={"model": {"name": "tiny"}, "eval": {"zeroshot_folder": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match="image folder not found"):
        build_eval_hooks(bad)
    cap = load_experiment(data={"model": {"name": "tiny_captioner"}, "eval": {"retrieval_data": str(data / "pairs.csv")}})
    with pytest.raises(ConfigError, match="eval.retrieval_data: .* needs a CLIP model"):
        build_eval_hooks(cap)


@pytest.mark.slow
def test_train_run_logs_zeroshot_and_retrieval(data, tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from train_helpers import PY, make_shards, run, write_config
    folder = _zs_folder(tmp_path / "zs")
    shards = make_shards(tmp_path / "train", 16, 8)
    cfg = write_config(tmp_path / "c.yaml", shards, tmp_path / "out", train_cfg={"max_steps": 2},
                       eval={"every_steps": 1, "zeroshot_folder": str(folder), "retrieval_data": str(data / "shards")})
    out = run([PY, "-m", "mmfm", "train", str(cfg)])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "zeroshot/top1" in r]
    assert len(evals) >= 2 and all("retrieval/text_to_image_R@1" in r for r in evals)


def test_hooks_take_clip_benchmark_datasets(tmp_path):
    from mmfm.eval.benchmarks.clip_benchmark import evaluate_benchmark
    from mmfm.tasks import build_task
    from tests.clip_benchmark_fixtures import write_wds_classification, write_wds_retrieval
    cls_root = write_wds_classification(tmp_path / "wds_cls")
    ret_root = write_wds_retrieval(tmp_path / "wds_ret")
    cfg = load_experiment(data={"model": {"name": "tiny"},
                                "eval": {"zeroshot_folder": str(cls_root), "retrieval_data": str(ret_root)}})
    hooks = build_eval_hooks(cfg)
    task = build_task(cfg)
    task.train()
    out = {}
    for hook in hooks:
        out.update(hook(task, 3))
    assert task.training and task.model.training
    zs = evaluate_benchmark(task.model, str(cls_root), workers=0, progress=False).metrics
    ret = evaluate_benchmark(task.model, str(ret_root), workers=0, progress=False).metrics
    assert out["zeroshot/top1"] == pytest.approx(zs["acc1"])
    assert out["zeroshot/mean_per_class_recall"] == pytest.approx(zs["mean_per_class_recall"])
    assert out["retrieval/text_to_image_R@5"] == pytest.approx(ret["image_retrieval_recall@5"])
    swapped = load_experiment(data={"model": {"name": "tiny"}, "eval": {"zeroshot_folder": str(ret_root)}})
    with pytest.raises(ConfigError, match="eval.zeroshot_folder: .* is a zeroshot_retrieval dataset"):
        build_eval_hooks(swapped)
