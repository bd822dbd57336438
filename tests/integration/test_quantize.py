"""int8 dynamic quantization for CPU inference: save/load through safetensors only is bit-exact, outputs stay
close to the float model (CLIP and captioner, GPT-2 Conv1D included), broken files fail clearly, and
``mmfm eval compare`` puts size, latency and the metric drop side by side."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmfm
from mmfm.eval.compare.variants import compare_models
from mmfm.models.quantized import quantize_model
from mmfm.config import ConfigError
from mmfm.export import export
from mmfm.models import build_model, save_pretrained

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "data_recipes"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, d / "clip")
    save_pretrained(build_model("tiny_captioner"), None, d / "captioner")
    return d


def test_clip_int8_round_trip_is_exact_and_close_to_float(ckpts, tmp_path):
    info = export(ckpts / "clip", "int8", tmp_path / "int8")
    assert sorted(info["files"]) == ["config.yaml", "meta.json", "model.int8.safetensors"]
    assert info["quantized_linears"] > 10 and info["quantized_embeddings"] == 1      # + the token embedding
    assert info["bytes"] < 0.35 * (ckpts / "clip" / "model.safetensors").stat().st_size
    from safetensors import safe_open
    with safe_open(str(tmp_path / "int8" / "model.int8.safetensors"), "pt") as f:     # plain tensors, no pickle
        assert f.get_tensor("visual.trunk.blocks.0.attn.qkv.weight_int8").dtype == torch.int8
        assert f.get_tensor("text.token_embedding.weight_uint8").dtype == torch.uint8
    meta = json.loads((tmp_path / "int8" / "meta.json").read_text())
    assert meta["quantization"]["format"] == "mmfm-int8-dynamic/1"
    float_model = mmfm.load(ckpts / "clip")
    loaded, fresh = mmfm.load(tmp_path / "int8"), quantize_model(float_model)
    x = torch.randn(4, 3, 32, 32)
    texts = ["a red circle", "two blue squares"]
    with torch.no_grad():
        a, b, c = (m.encode_image(x, normalize=True) for m in (float_model, fresh, loaded))
    assert torch.equal(b, c)                                                 # saved == quantized in memory
    with torch.no_grad():                                                    # mmfm.load opens int8 folders too
        assert torch.equal(mmfm.load(tmp_path / "int8").encode_image(x, normalize=True), c)
    assert F.cosine_similarity(a, c).min() > 0.99
    assert torch.allclose(fresh.embed_texts(texts), loaded.embed_texts(texts))
    assert F.cosine_similarity(float_model.embed_texts(texts), loaded.embed_texts(texts)).min() > 0.99
    assert loaded.classify(x[:1], ["a", "b"])[0]["label"] in ("a", "b")      # the scripting API still works


def test_captioner_int8_converts_conv1d_and_generates(ckpts, tmp_path):
    export(ckpts / "captioner", "int8", tmp_path / "int8")
    info = json.loads((tmp_path / "int8" / "meta.json").read_text())["quantization"]
    assert info["quantized_embeddings"] == 2                                  # token + position embeddings
    assert (tmp_path / "int8" / "model.int8.safetensors").stat().st_size < \
        0.6 * (ckpts / "captioner" / "model.safetensors").stat().st_size
    model, q = mmfm.load(ckpts / "captioner"), mmfm.load(tmp_path / "int8")
    from transformers.pytorch_utils import Conv1D
    assert len(q.quantization["converted_conv1d"]) == 14     # 2 layers x (self c_attn/c_proj, cross c_attn/q_attn/
    assert not any(isinstance(m, Conv1D) for m in q.modules())  # c_proj, mlp c_fc/c_proj): all int8 now
    x = torch.randn(2, 3, 32, 32)
    ids = torch.randint(3, 40000, (2, 7))
    with torch.no_grad():
        a = model(image=x, text_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
        b = q(image=x, text_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    out = q.generate_ids(x, [[]] * 2, max_new_tokens=5, min_new_tokens=5)
    assert out.shape == (2, 5)


def test_broken_int8_folders_fail_clearly(ckpts, tmp_path):
    export(ckpts / "clip", "int8", tmp_path / "int8")
    weights = tmp_path / "int8" / "model.int8.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="model.int8.safetensors"):
        mmfm.load(tmp_path / "int8")
    export(ckpts / "clip", "int8", tmp_path / "int8c")      # an int8 folder that lost its weights file
    (tmp_path / "int8c" / "model.int8.safetensors").unlink()
    with pytest.raises(ConfigError, match="not an mmfm checkpoint.*model.int8.safetensors"):
        mmfm.load(tmp_path / "int8c")
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(quantize_model(mmfm.load(ckpts / "clip")))
    export(ckpts / "clip", "int8", tmp_path / "int8b")
    meta = json.loads((tmp_path / "int8b" / "meta.json").read_text())
    meta["quantization"]["format"] = "something-else/9"
    (tmp_path / "int8b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="quantization format"):
        mmfm.load(tmp_path / "int8b")


def test_compare_clip_on_an_image_folder(ckpts, tmp_path):
    export(ckpts / "clip", "int8", tmp_path / "int8")
    res = compare_models(str(ckpts / "clip"), str(FIXTURE / "image_folder" / "fixture"),
                         ["int8", str(tmp_path / "int8")], latency_images=3, progress=False)
    orig, here, saved = res.metrics["rows"]
    assert res.meta["metric"] == "zero-shot top-1" and orig["metric"]["samples"] == 6
    assert here["metric"]["value"] == saved["metric"]["value"]               # same int8 weights either way
    assert saved["size_bytes"] == (tmp_path / "int8" / "model.int8.safetensors").stat().st_size
    assert here["size_ratio"] < 0.5 and orig["size_ratio"] == 1.0
    assert here["metric_drop"] == pytest.approx(orig["metric"]["value"] - here["metric"]["value"])
    assert all(r["latency"]["ms_per_image"] > 0 and r["latency"]["images"] == 3 for r in res.metrics["rows"])


def test_eval_compare_cli_for_a_captioner(ckpts, tmp_path, capsys):
    from mmfm.commands.eval import main as eval_main
    rows = [{"image": str(FIXTURE / "csv_pairs/fixture/images" / n), "caption": c}
            for n, c in (("0.jpg", "a red circle"), ("1.jpg", "a blue square"), ("3.jpg", "a red square"))]
    data = tmp_path / "caps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cmp.json"
    assert eval_main(["compare", "--model", str(ckpts / "captioner"), str(data), "--latency-images", "2",
                      "--max-new-tokens", "5", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "CIDEr-D" in printed and "int8" in printed
    res = json.loads(out.read_text())
    assert [r["role"] for r in res["rows"]] == ["original", "variant"] and res["decoding"]["max_new_tokens"] == 5
    assert res["rows"][1]["int8"] and res["rows"][0]["metric"]["samples"] == 3


def test_int8_folders_work_in_every_command_that_takes_a_model(ckpts, tmp_path):
    """The one loader: an int8 captioner captions and evaluates, an int8 CLIP classifies and retrieves, through
    the same commands as float checkpoints (before, `mmfm caption` and `mmfm eval` refused int8 captioners)."""
    from mmfm.cli import main as cli

    export(ckpts / "captioner", "int8", tmp_path / "cap8")
    export(ckpts / "clip", "int8", tmp_path / "clip8")
    shards = tmp_path / "shards"
    assert cli(["shards", "build", "--recipe", "coco_captions", "--out", str(shards)]) == 0
    images = FIXTURE / "coco_captions" / "fixture" / "images"
    assert cli(["caption", "--model", str(tmp_path / "cap8"), str(images), "--max-new-tokens", "3",
                "--out", str(tmp_path / "alt.jsonl"), "--quiet"]) == 0
    assert len((tmp_path / "alt.jsonl").read_text().splitlines()) == 3
    assert cli(["eval", "caption", "--model", str(tmp_path / "cap8"), str(shards), "--max-new-tokens", "3",
                "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["samples"] == 3
    assert cli(["zeroshot", "--model", str(tmp_path / "clip8"), str(FIXTURE / "image_folder" / "fixture"),
                "--templates", "simple", "--no-cache", "--quiet", "--metrics", str(tmp_path / "zs.json")]) == 0
    assert json.loads((tmp_path / "zs.json").read_text())["n_samples"] == 6
    assert cli(["retrieval", "--model", str(tmp_path / "clip8"), str(shards), "--quiet",
                "--out", str(tmp_path / "r.json")]) == 0
    with pytest.raises(ConfigError, match="not a captioner"):
        mmfm.load(tmp_path / "clip8", expect="captioner")
