"""Retrieval recall@k (several captions per image) against a plain-loop reference, and CSV/JSONL reading."""
import json

import pytest
import torch
import torch.nn.functional as F

from mmfm.config import ConfigError
from mmfm.eval.records import read_table
from mmfm.eval.retrieval import recall_at_k


def _reference(img, txt, owner, k):
    """CLIP-paper recall, written the slow obvious way."""
    sims = txt @ img.T
    t2i = [int(owner[t]) in sims[t].argsort(descending=True)[:k].tolist() for t in range(len(txt))]
    i2t = []
    for i in range(len(img)):
        top = sims[:, i].argsort(descending=True)[:k].tolist()
        i2t.append(any(int(owner[t]) == i for t in top))
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_recall_matches_reference_with_multiple_captions(chunk):
    g = torch.Generator().manual_seed(0)
    n_img, dim = 23, 8
    img = F.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    counts = torch.randint(1, 5, (n_img,), generator=g)
    owner = torch.repeat_interleave(torch.arange(n_img), counts)
    txt = F.normalize(img[owner] + 0.9 * torch.randn(len(owner), dim, generator=g), dim=-1)
    m = recall_at_k(img, txt, owner, ks=(1, 5, 10), chunk=chunk)
    for k in (1, 5, 10):
        i2t, t2i = _reference(img, txt, owner, k)
        assert m[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert m[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert 0 < m["image_to_text_R@1"] < m["image_to_text_R@10"] <= 1


def test_perfect_embeddings_give_recall_one():
    img = torch.eye(4)
    owner = torch.tensor([0, 0, 1, 2, 3, 3])
    m = recall_at_k(img, img[owner], owner, ks=(1,))
    assert m["image_to_text_R@1"] == 1.0 and m["text_to_image_R@1"] == 1.0


def test_read_csv_groups_captions_and_resolves_paths(tmp_path):
    (tmp_path / "a.csv").write_text("filepath,caption\nimgs/1.jpg,a cat\nimgs/2.jpg,a dog\nimgs/1.jpg,a kitten\n")
    t = read_table(tmp_path / "a.csv")
    assert t.paths == [str(tmp_path / "imgs/1.jpg"), str(tmp_path / "imgs/2.jpg")]
    assert t.captions == [["a cat", "a kitten"], ["a dog"]]


def test_read_jsonl_caption_lists_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"image": "/abs/x.png", "captions": ["one", "two"]}) + "\n")
    assert read_table(p).captions == [["one", "two"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"picture": "x.png", "caption": "c"}) + "\n")
    with pytest.raises(ConfigError, match="no image path column .* columns are picture, caption"):
        read_table(bad)
    assert read_table(bad, image_key="picture").paths[0].endswith("x.png")
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps({"image": "x.png", "captions": []}) + "\n")
    with pytest.raises(ConfigError, match="row 1: no caption"):
        read_table(empty)
    broken = tmp_path / "b.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ConfigError, match="b.jsonl line 1: invalid JSON"):
        read_table(broken)
