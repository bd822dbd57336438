"""Every evaluation warns when its data overlaps the model's training data (the checkpoint's resolved config names
it: ``data.train``), by shard path or by sample key: a captioner scored CIDEr-D 1.80 on its own training photos.
Real tiny models saved with a training config, real shards written by mmfm."""
import json
import shutil

import pytest
import torch

from mmfm.config import load_experiment
from mmfm.eval.overlap import overlap_warning, sample_key, train_overlap
from mmfm.models import build_model, save_pretrained
from tests.integration.train_helpers import make_shards, png


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("overlap")
    train = make_shards(d / "train", 8, 4, prefix="k")                      # k0000..k0007 in 2 shards
    make_shards(d / "fresh", 6, 3, prefix="f")                              # never trained on
    torch.manual_seed(0)
    for name, model in (("clip", "tiny"), ("cap", "tiny_captioner")):
        cfg = load_experiment(data={"model": {"name": model}, "data": {"train": [{"path": train}]}})
        save_pretrained(build_model(model), cfg, d / name)
    save_pretrained(build_model("tiny"), None, d / "untrained")             # no training data named
    folder = d / "folder"                                                   # k0001/k0002 as image files
    for cls, keys in (("a", ("k0001", "x1")), ("b", ("k0002", "x2"))):
        (folder / cls).mkdir(parents=True)
        for k in keys:
            (folder / cls / f"{k}.png").write_bytes(png(int(k[-1])))
    return d


def test_overlap_by_shard_path_and_by_sample_key(setup):
    clip = str(setup / "clip")
    same = train_overlap(clip, str(setup / "train"))
    assert len(same["shards"]) == 2 and same["train"] == [str(setup / "train")]
    assert train_overlap(clip, str(setup / "fresh")) is None
    assert train_overlap(str(setup / "untrained"), str(setup / "train")) is None
    assert train_overlap("openclip:ViT-B-32", str(setup / "train")) is None
    # the same samples copied into another shard: no shared path, but shared keys
    shutil.copytree(setup / "train", setup / "copy")
    copied = train_overlap(clip, str(setup / "copy"))
    assert copied["shards"] == [] and copied["keys"] == 8 and copied["of"] == 8
    by_file = train_overlap(clip, str(setup / "folder"), ["a/k0001.png", "a/x1.png", "b/k0002.png", "b/x2.png"])
    assert by_file["keys"] == 2 and by_file["of"] == 4 and by_file["examples"] == ["k0001", "k0002"]
    assert "2 of 4 sample keys" in overlap_warning(by_file) and "WARNING" in overlap_warning(by_file)
    assert sample_key("shard-000000.tar:k0003") == "k0003" and sample_key("x/y/k0003.jpg") == "k0003"


def test_zeroshot_retrieval_and_compare_warn(setup, tmp_path, capsys):
    from mmfm.cli import main
    clip = str(setup / "clip")
    metrics = tmp_path / "zs.json"
    assert main(["zeroshot", str(setup / "folder"), "--model", clip, "--templates", "simple", "--workers", "0",
                 "--metrics", str(metrics), "--quiet", "--no-cache"]) == 0
    assert "overlaps the model's training data" in capsys.readouterr().err
    assert json.loads(metrics.read_text())["train_overlap"]["keys"] == 2
    assert main(["retrieval", str(setup / "train"), "--model", clip, "--workers", "0", "--quiet"]) == 0
    assert "2 shard(s)" in capsys.readouterr().err
    assert main(["retrieval", str(setup / "fresh"), "--model", clip, "--workers", "0", "--quiet"]) == 0
    assert "overlaps" not in capsys.readouterr().err
    out = tmp_path / "cmp"
    assert main(["eval", "compare", clip, str(setup / "untrained"), "--data", f"seen={setup / 'train'}",
                 "--bootstrap", "20", "--out", str(out), "--quiet"]) == 0
    notes = json.loads((out / "compare.json").read_text())["notes"]
    assert any(n.startswith(f"{clip} on seen: WARNING: seen overlaps") for n in notes)
    assert not any(n.startswith(str(setup / "untrained")) and "overlaps" in n for n in notes)


@pytest.mark.slow
def test_eval_caption_warns_and_records_the_overlap(setup, tmp_path, capsys):
    from mmfm.cli import main
    out = tmp_path / "cap"
    assert main(["eval", "caption", str(setup / "train"), "--model", str(setup / "cap"), "--out", str(out),
                 "--max-new-tokens", "3", "--quiet"]) == 0
    assert "overlaps the model's training data" in capsys.readouterr().err
    assert len(json.loads((out / "metrics.json").read_text())["train_overlap"]["shards"]) == 2
