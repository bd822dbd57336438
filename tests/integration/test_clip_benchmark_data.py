"""CLIP_benchmark's data layouts as mmfm evaluation sources: its WebDataset benchmark folders (local and through
fsspec), torchvision datasets on disk, suite files and the CSV. Every figure is checked against the same
computation done by hand with open_clip on the same decoded images (the anchor comparison with
``clip_benchmark eval`` itself is tests/integration/test_clip_benchmark_parity.py)."""
import csv
import io
import tarfile

import numpy as np
import pytest
import torch

from mmfm.config import ConfigError
from mmfm.eval.benchmarks.clip_benchmark import evaluate_benchmark, read_suite, result_row, run_suite, write_csv
from mmfm.eval.benchmarks.sources import open_benchmark
from mmfm.eval.result import EvalResult
from tests.clip_benchmark_fixtures import (CLASSNAMES, TEMPLATES, write_cifar10,
                                           write_wds_classification, write_wds_retrieval)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def oc(tiny_oc):
    return tiny_oc


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cb")


@pytest.fixture(scope="module")
def cls_root(bench_dir):
    return write_wds_classification(bench_dir / "wds_tiny")


@pytest.fixture(scope="module")
def ret_root(bench_dir):
    return write_wds_retrieval(bench_dir / "wds_tiny_ret")


def _tar_samples(root):
    """(key, {ext: bytes}) of every sample, shard by shard, read with the standard library."""
    out = []
    n = int((root / "test" / "nshards.txt").read_text())
    for i in range(n):
        with tarfile.open(root / "test" / f"{i}.tar") as tar:
            groups = {}
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                groups.setdefault(key, {})[ext] = tar.extractfile(m).read()
            out += sorted(groups.items())
    return out


def _image(fields):
    from PIL import Image
    ext = next(e for e in ("webp", "png", "jpg") if e in fields)
    return Image.open(io.BytesIO(fields[ext])).convert("RGB")


def _hand_classification(oc, root):
    samples = _tar_samples(root)
    with torch.no_grad():
        x = torch.stack([oc["preprocess"](_image(f)) for _, f in samples])
        img = oc["model"].encode_image(x, normalize=True)
        rows = []
        for c in CLASSNAMES:
            e = oc["model"].encode_text(oc["tokenizer"]([t.format(c=c) for t in TEMPLATES]), normalize=True).mean(0)
            rows.append(e / e.norm())
        logits = img @ torch.stack(rows, 1)
    y = np.array([int(f["cls"]) for _, f in samples])
    pred = logits.argmax(1).numpy()
    recalls = [(pred[y == c] == c).mean() for c in range(len(CLASSNAMES))]
    top5 = (logits.topk(5, 1).indices.numpy() == y[:, None]).any(1).mean()
    return (pred == y).mean(), float(np.mean(recalls)), top5


def test_wds_classification_equals_hand_computation(oc, cls_root):
    res = evaluate_benchmark(oc["spec"], str(cls_root), workers=0, batch_size=7, progress=False)
    assert isinstance(res, EvalResult) and res.task == "zeroshot_classification" and "acc1" in res.metrics
    m = res.summary()
    acc1, mpcr, top5 = _hand_classification(oc, cls_root)
    assert m["task"] == "zeroshot_classification" and m["n_samples"] == 30 and m["n_shards"] == 3
    assert m["acc1"] == pytest.approx(acc1, abs=1e-9) and m["top1"] == m["acc1"]
    assert m["mean_per_class_recall"] == pytest.approx(mpcr, abs=1e-9)
    assert m["acc5"] == pytest.approx(top5, abs=1e-9)
    assert m["templates"] == "zeroshot_classification_templates.txt" and m["n_templates"] == len(TEMPLATES)
    assert 0 < acc1 < 1 and acc1 != pytest.approx(mpcr)  # a random model; uneven classes: the two differ


def _hand_retrieval(oc, root, ks):
    samples = _tar_samples(root)
    caps, owner = [], []
    for i, (_, f) in enumerate(samples):
        for c in f["txt"].decode().splitlines():
            caps.append(c)
            owner.append(i)
    with torch.no_grad():
        img = oc["model"].encode_image(torch.stack([oc["preprocess"](_image(f)) for _, f in samples]), normalize=True)
        txt = oc["model"].encode_text(oc["tokenizer"](caps), normalize=True)
    s = (txt @ img.T).numpy()
    owner = np.array(owner)
    out = {}
    for k in ks:
        top_img = np.argsort(-s, axis=1)[:, :k]
        out[f"image_retrieval_recall@{k}"] = float((top_img == owner[:, None]).any(1).mean())
        top_txt = np.argsort(-s.T, axis=1)[:, :k]
        out[f"text_retrieval_recall@{k}"] = float(np.mean([(owner[top_txt[i]] == i).any()
                                                           for i in range(len(samples))]))
    return out, len(caps)


def test_wds_retrieval_several_captions_equals_hand_computation(oc, ret_root):
    m = evaluate_benchmark(oc["spec"], str(ret_root), ks=(1, 5, 10), workers=0, batch_size=4, progress=False).summary()
    want, n_caps = _hand_retrieval(oc, ret_root, (1, 5, 10))
    assert m["task"] == "zeroshot_retrieval" and m["n_samples"] == 12 and m["n_captions"] == n_caps == 24
    for k, v in want.items():
        assert m[k] == pytest.approx(v, abs=1e-6), k
    assert m["text_to_image_R@1"] == m["image_retrieval_recall@1"]
    assert 0 < want["image_retrieval_recall@5"] < 1


def test_wds_through_fsspec_url_gives_the_same_numbers(oc, cls_root):
    import fsspec
    mem = fsspec.filesystem("memory")
    for f in cls_root.rglob("*"):
        if f.is_file():
            mem.pipe_file(f"/cbmem/{f.relative_to(cls_root).as_posix()}", f.read_bytes())
    local = evaluate_benchmark(oc["spec"], str(cls_root), workers=0, progress=False).summary()
    remote = evaluate_benchmark(oc["spec"], "memory://cbmem", workers=0, progress=False).summary()
    assert remote["n_samples"] == 30
    assert (remote["acc1"], remote["mean_per_class_recall"]) == (local["acc1"], local["mean_per_class_recall"])


@pytest.mark.parametrize("remove,named", [("test/nshards.txt", "test/nshards.txt"), ("classnames.txt", "classnames.txt"),
                                          ("test/1.tar", "test/1.tar")])
def test_missing_file_is_one_line_naming_it(cls_root, tmp_path, remove, named):
    import shutil
    root = tmp_path / "broken"
    shutil.copytree(cls_root, root)
    (root / remove).unlink()
    with pytest.raises(ConfigError) as e:
        open_benchmark(str(root))
    msg = str(e.value)
    assert str(root / named) in msg and "\n" not in msg


def test_an_image_folder_with_a_classnames_file_stays_an_image_folder(cls_root, tmp_path):
    from mmfm.eval.benchmarks.sources import is_benchmark_source
    (tmp_path / "cat").mkdir()
    (tmp_path / "classnames.txt").write_text("cat\n")
    assert not is_benchmark_source(str(tmp_path))
    assert is_benchmark_source(str(cls_root)) and is_benchmark_source("wds/x") and is_benchmark_source("torchvision:A:b")


def test_torchvision_cifar10_on_disk(oc, tmp_path):
    root = write_cifar10(tmp_path / "cifar")
    bench = open_benchmark(f"torchvision:CIFAR10:{root}")
    assert bench.classnames == ["airplane", "automobile", "bird", "cat"] and len(bench.dataset) == 20
    m = evaluate_benchmark(oc["spec"], bench, templates=TEMPLATES, workers=0, progress=False).summary()
    with torch.no_grad():
        x = torch.stack([oc["preprocess"](bench.dataset[i][0]) for i in range(20)])
        img = oc["model"].encode_image(x, normalize=True)
        w = []
        for c in bench.classnames:
            e = oc["model"].encode_text(oc["tokenizer"]([t.format(c=c) for t in TEMPLATES]), normalize=True).mean(0)
            w.append(e / e.norm())
        pred = (img @ torch.stack(w, 1)).argmax(1).numpy()
    y = np.array([i % 4 for i in range(20)])
    assert m["acc1"] == pytest.approx((pred == y).mean()) and m["dataset"] == "torchvision/CIFAR10"
    assert np.isnan(m["acc5"])                                       # fewer than 5 classes, as CLIP_benchmark
    (root / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(ConfigError, match="batches.meta is missing"):
        open_benchmark(f"torchvision:CIFAR10:{root}")


def test_suite_file_writes_one_csv_in_clip_benchmark_columns(oc, cls_root, ret_root, tmp_path):
    suite = tmp_path / "suite.txt"
    suite.write_text(f"# my benchmarks\nwds/{cls_root.name}\n\nwds/{ret_root.name}\n")
    specs = read_suite(str(suite))
    assert specs == [f"wds/{cls_root.name}", f"wds/{ret_root.name}"]
    res = run_suite(oc["spec"], specs, dataset_root=str(cls_root.parent / "{dataset}"), workers=0, ks=(1, 5),
                    progress=False)
    rows = [result_row(oc["spec"], m) for m in res.predictions]
    assert rows == res.meta["rows"] and list(res.metrics) == [f"wds/{cls_root.name}", f"wds/{ret_root.name}"]
    out = tmp_path / "benchmark.csv"
    write_csv(rows, out)
    got = list(csv.DictReader(out.open()))
    assert list(got[0])[:6] == ["dataset", "model", "pretrained", "task", "language", "model_fullname"]
    assert {"acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@5"} <= set(got[0])
    assert got[0]["dataset"] == f"wds/{cls_root.name}" and got[0]["task"] == "zeroshot_classification"
    assert got[0]["model"] == str(oc["config"]) and got[0]["pretrained"] == str(oc["weights"])
    assert float(got[0]["acc1"]) == pytest.approx(res.predictions[0]["acc1"])
    assert got[1]["task"] == "zeroshot_retrieval" and got[1]["acc1"] == ""
    assert float(got[1]["image_retrieval_recall@5"]) == pytest.approx(res.predictions[1]["image_retrieval_recall@5"])


# ----------------------------------------------------------------------------- command line
def test_cli_suite_zeroshot_retrieval_and_errors(oc, cls_root, ret_root, tmp_path, capsys):
    import json
    import shutil

    from mmfm.cli import main
    root = str(cls_root.parent / "{dataset}")
    suite = tmp_path / "suite.txt"
    suite.write_text(f"wds/{cls_root.name}\nwds/{ret_root.name}\n")
    out = tmp_path / "res.csv"
    assert main(["eval", "benchmark", str(suite), "--model", oc["spec"], "--dataset-root", root, "--csv", str(out),
                 "--workers", "0", "--k", "1,5", "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["dataset"] for r in rows] == [f"wds/{cls_root.name}", f"wds/{ret_root.name}"]
    want = evaluate_benchmark(oc["spec"], str(cls_root), workers=0, progress=False).summary()
    assert float(rows[0]["acc1"]) == pytest.approx(want["acc1"])

    metrics = tmp_path / "zs.json"
    assert main(["zeroshot", str(cls_root), "--model", oc["spec"], "--metrics", str(metrics), "--workers", "0",
                 "--quiet"]) == 0
    m = json.loads(metrics.read_text())
    assert m["acc1"] == pytest.approx(want["acc1"]) and m["mean_per_class_recall"] == pytest.approx(
        want["mean_per_class_recall"])
    assert main(["retrieval", f"wds/{ret_root.name}", "--dataset-root", root, "--model", oc["spec"],
                 "--workers", "0", "--quiet"]) == 0
    assert "image_retrieval_recall@1" in capsys.readouterr().out

    capsys.readouterr()
    assert main(["zeroshot", str(ret_root), "--model", oc["spec"]]) == 2            # a retrieval set
    assert "use mmfm retrieval" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(cls_root, broken)
    (broken / "test" / "2.tar").unlink()
    assert main(["zeroshot", str(broken), "--model", oc["spec"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(broken / "test" / "2.tar") in err
