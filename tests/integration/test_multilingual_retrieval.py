"""Per-language retrieval on XM3600's captions.jsonl and Multi30k's data/task1 files (fixtures written in their
released formats), with a tiny multilingual transformers text tower (a BERT whose word-level vocabulary holds the
English, German and French words); the recalls are checked against a hand computation from the model's own
embeddings."""
import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.benchmarks.multilingual import evaluate_multilingual, read_multi30k, read_xm3600

CAPS = {
    "en": [["a red dog", "a dog in red"], ["a blue house"], ["two green birds", "green birds"]],
    "de": [["ein roter Hund"], ["ein blaues Haus", "das Haus ist blau"], ["zwei grüne Vögel"]],
    "fr": [["un chien rouge"], ["une maison bleue"], ["deux oiseaux verts", "oiseaux verts"]],
}
KEYS = ["000411001ff7dd4f", "0a2f4c1e9b7d3a55", "f03a77c2d1e6b8a0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    d = tmp_path_factory.mktemp("ml")
    words = sorted({w for caps in CAPS.values() for c in sum(caps, []) for w in c.split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                      sep_token="[SEP]", model_max_length=32)
    torch.manual_seed(0)
    bert = tf.BertModel(tf.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32))
    bert.save_pretrained(d / "text")
    fast.save_pretrained(d / "text")
    # XM3600's released captions.jsonl: one image a line, every language a dict with its caption list
    (d / "images").mkdir()
    for i, key in enumerate(KEYS):
        Image.new("RGB", (40, 32), ("red", "blue", "green")[i]).save(d / "images" / f"{key}.jpg")
    with open(d / "captions.jsonl", "w", encoding="utf-8") as f:
        for i, key in enumerate(KEYS):
            row = {"image/key": key}
            for lang, caps in CAPS.items():
                row[lang] = {"caption": caps[i], "caption/tokenized": caps[i],
                             "caption/tokenized/lowercase": [c.lower() for c in caps[i]]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # Multi30k's data/task1: image_splits/SPLIT.txt and raw/SPLIT.LANG.gz, one caption a line
    task = d / "task1"
    (task / "image_splits").mkdir(parents=True)
    (task / "raw").mkdir()
    (task / "image_splits" / "test_2016_flickr.txt").write_text("".join(f"{k}.jpg\n" for k in KEYS))
    for lang, caps in CAPS.items():
        with gzip.open(task / "raw" / f"test_2016_flickr.{lang}.gz", "wt", encoding="utf-8") as g:
            g.write("".join(c[0] + "\n" for c in caps))
    from mmfm.models import build_model, save_pretrained
    torch.manual_seed(1)
    cfg = {"name": "tiny", "text": {"type": "hf", "hf_path": str(d / "text"), "pooling": "mean"}}
    model = build_model(cfg)
    save_pretrained(model, model.model_cfg, d / "clip")
    return d


def _hand(model, images, per_image, k):
    """R@k both ways, by counting, from the model's own embeddings."""
    from mmfm.data.transforms import eval_transform
    t = eval_transform(model)
    with torch.no_grad():
        img = model.encode_image(torch.stack([t(Image.open(p).convert("RGB")) for p in images]), normalize=True)
        texts = [c for caps in per_image for c in caps]
        tok = model.tokenizer(texts)
        txt = model.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"), normalize=True)
    owner = [i for i, caps in enumerate(per_image) for _ in caps]
    s = (img @ txt.T).numpy()
    t2i = np.mean([sum(s[j, c] > s[owner[c], c] for j in range(len(images))) < k for c in range(len(texts))])
    i2t = np.mean([any(owner[c] == i for c in np.argsort(-s[i], kind="stable")[:k]) for i in range(len(images))])
    return i2t, t2i


def test_xm3600_per_language_recall_equals_hand_computation(setup):
    from mmfm.models.checkpoint import load
    data = read_xm3600(str(setup / "captions.jsonl"), str(setup / "images"))
    assert list(data.captions) == ["en", "de", "fr"] and data.captions["de"][1] == CAPS["de"][1]
    res = evaluate_multilingual(str(setup / "clip"), data, ks=(1, 2), progress=False)
    model = load(str(setup / "clip")).eval()
    for lang in CAPS:
        for k in (1, 2):
            i2t, t2i = _hand(model, data.images, CAPS[lang], k)
            assert res.metrics[lang][f"image_to_text_R@{k}"] == pytest.approx(i2t), (lang, k)
            assert res.metrics[lang][f"text_to_image_R@{k}"] == pytest.approx(t2i), (lang, k)
    assert res.metrics["mean"]["text_to_image_R@1"] == pytest.approx(
        np.mean([res.metrics[lang]["text_to_image_R@1"] for lang in CAPS]))
    assert res.meta["n_captions"] == {"en": 5, "de": 4, "fr": 4} and res.meta["languages"] == ["en", "de", "fr"]
    with pytest.raises(ConfigError, match="no captions in ja"):
        read_xm3600(str(setup / "captions.jsonl"), str(setup / "images"), ["en", "ja"])


def test_multi30k_cli_per_language(setup, tmp_path, capsys):
    from mmfm.cli import main
    from mmfm.models.checkpoint import load
    out = tmp_path / "ml.json"
    assert main(["eval", "multilingual", str(setup / "task1"), "--images", str(setup / "images"), "--langs",
                 "en,de", "--model", str(setup / "clip"), "--k", "1", "--out", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())
    model = load(str(setup / "clip")).eval()
    images = [str(setup / "images" / f"{k}.jpg") for k in KEYS]
    for lang in ("en", "de"):
        i2t, t2i = _hand(model, images, [[c[0]] for c in CAPS[lang]], 1)
        assert got[lang]["image_to_text_R@1"] == pytest.approx(i2t) and got[lang]["text_to_image_R@1"] == \
            pytest.approx(t2i)
    assert "  de     image_to_text R@1" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="test_2016_flickr.cs is missing"):
        read_multi30k(str(setup / "task1"), "test_2016_flickr", str(setup / "images"), ["cs"])
