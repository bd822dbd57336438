"""Fine-tuning recipes (configs/experiments/finetune/), per-group learning rates with layer-wise decay, LoRA
through peft (only adapters train, merged == unmerged) and WiSE-FT weight interpolation, on tiny real models."""
from __future__ import annotations

import math

import pytest
import torch

from mmfm.config import ConfigError, load_experiment
from mmfm.models import build_model
from mmfm.tasks import build_task
from mmfm.train.optim import build_optimizer, build_scheduler, lr_lambda_factory

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = ("full_ft", "lit", "locked_text", "unlock_last", "lora")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with its own word tokenizer: the shape of vit_minilm's MiniLM text tower."""
    from transformers import BertConfig, BertModel

    from tests.helpers import word_tokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = "a an the photo of red blue green circle square emoji cat dog".split()
    word_tokenizer(folder, words)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32, pad_token_id=0)).save_pretrained(folder)
    return str(folder)


def tiny_hf_model(bert_dir: str) -> dict:
    """vit_minilm's layout (timm ViT + transformers text tower + text.proj) at test size."""
    return {"name": None, "kind": "clip", "embed_dim": 32,
            "vision": {"timm_model": "vit_tiny_patch16_224", "image_size": 32,
                       "timm_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}},
            "text": {"type": "hf", "hf_path": bert_dir, "pooling": "mean", "context_length": 16}}


def _dotted(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        out.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def recipe(name: str, bert_dir: str, **sections):
    """The recipe with its model section swapped for the tiny one, key by key (the recipe's own model keys, e.g.
    vision.lock, stay), plus ``sections`` set key by key."""
    return load_experiment(f"configs/experiments/finetune/{name}.yaml",
                           values={**_dotted({"model": tiny_hf_model(bert_dir)}, ""), **_dotted(sections, "")})


def lrs_by_name(task, opt) -> dict[str, float]:
    ids = {id(p): n for n, p in task.model.named_parameters()}
    return {ids[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}


def test_recipes_load_build_and_train_what_they_say(repo_root, bert_dir, monkeypatch):
    """Each recipe loads strictly, builds its task on a tiny vit_minilm-shaped model, and its optimizer holds
    exactly the parameters the recipe means to train."""
    monkeypatch.chdir(repo_root)
    others = ("openclip_csv", "continue_pretrain_replay")     # docs/finetune.md's recipes, tested with their doc
    assert sorted(p.stem for p in (repo_root / "configs/experiments/finetune").glob("*.yaml")) == \
        sorted((*RECIPES, "base", *others))
    for name in RECIPES:
        cfg = recipe(name, bert_dir)
        assert cfg.train.init_from, name                     # a fine-tuning recipe starts from weights
        task = build_task(cfg)
        trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
        everything = {n for n, _ in task.model.named_parameters()}
        lrs = lrs_by_name(task, build_optimizer(task, cfg.train))
        assert set(lrs) == trainable, name
        vis = {n for n in trainable if n.startswith("visual.")}
        txt = {n for n in trainable if n.startswith("text.")}
        if name == "full_ft":
            assert trainable == everything
        elif name == "lit":
            assert not vis and txt and "image_proj.weight" in trainable
        elif name == "locked_text":
            assert txt == {"text.proj.weight"} and vis == {n for n in everything if n.startswith("visual.")}
        elif name == "unlock_last":
            # timm's last 2 groups of a 3-block ViT: blocks 1 and 2 (the final norm joins the last block)
            assert {n.split(".")[3] for n in vis if ".blocks." in n} == {"1", "2"}
            assert "visual.trunk.norm.weight" in vis and "visual.trunk.patch_embed.proj.weight" not in vis
            assert {n.split(".")[4] for n in txt if ".layer." in n} == {"0", "1"} and "text.proj.weight" in txt
        else:
            assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
            assert any(n.startswith("visual.") for n in trainable) and any(n.startswith("text.") for n in trainable)


def test_full_ft_lrs_match_timm_layer_decay(repo_root, bert_dir, monkeypatch):
    """full_ft.yaml: heads at train.lr, each tower at its lr_groups lr times timm's layer-decay scale (the vision
    tower compared with timm's own param_groups_layer_decay)."""
    from timm.optim import param_groups_layer_decay

    monkeypatch.chdir(repo_root)
    cfg = recipe("full_ft", bert_dir)
    tc = cfg.train
    task = build_task(cfg)
    lrs = lrs_by_name(task, build_optimizer(task, tc))
    decay, vis_lr, txt_lr = tc.layer_decay, tc.lr_groups["visual"], tc.lr_groups["text"]
    assert decay < 1 and vis_lr != txt_lr != tc.lr
    for head in ("image_proj.weight", "logit_scale", "text.proj.weight"):
        assert lrs[head] == tc.lr
    trunk = task.model.visual.trunk
    timm_groups = param_groups_layer_decay(trunk, weight_decay=0.0, layer_decay=decay)
    ids = {id(p): n for n, p in trunk.named_parameters()}
    timm_scale = {ids[id(p)]: g["lr_scale"] for g in timm_groups for p in g["params"]}
    for name, scale in timm_scale.items():
        assert lrs[f"visual.trunk.{name}"] == pytest.approx(vis_lr * scale, rel=1e-12), name
    # text: embeddings 0, layer i is i + 1, the rest (the projection, a head at train.lr) on top: K = 3
    assert lrs["text.transformer.embeddings.word_embeddings.weight"] == pytest.approx(txt_lr * decay ** 3)
    assert lrs["text.transformer.encoder.layer.0.attention.self.query.weight"] == pytest.approx(txt_lr * decay ** 2)
    assert lrs["text.transformer.encoder.layer.1.output.dense.weight"] == pytest.approx(txt_lr * decay)


def test_open_clip_text_tower_layer_ids():
    from mmfm.models.towers import layer_ids

    ids = layer_ids(build_model("tiny").text)                  # 2 resblocks
    assert ids["token_embedding.weight"] == ids["positional_embedding"] == 0
    assert ids["transformer.resblocks.1.attn.in_proj_weight"] == 2
    assert ids["ln_final.weight"] == ids["text_projection"] == 2          # join the last block, as in timm


def test_lr_groups_errors_name_the_key(repo_root, bert_dir, monkeypatch):
    monkeypatch.chdir(repo_root)
    cfg = recipe("full_ft", bert_dir, train={"lr_groups": {"vision": 1e-5}})
    task = build_task(cfg)
    with pytest.raises(ConfigError, match=r"train.lr_groups.vision: no parameter .* top-level modules: .*visual"):
        build_optimizer(task, cfg.train)
    with pytest.raises(ConfigError, match=r"train.lr_groups.text: must be >= 0"):
        recipe("full_ft", bert_dir, train={"lr_groups": {"text": -1.0}})


def test_resume_schedule_keeps_each_groups_base_lr(repo_root, bert_dir, monkeypatch):
    """Resuming rebuilds the schedule at the restored step: every group at ITS base lr times the factor (the old
    code reset every group's base to train.lr, so the towers would jump to the heads' lr)."""
    monkeypatch.chdir(repo_root)
    cfg = recipe("full_ft", bert_dir, train={"max_steps": 10, "warmup_steps": 2})
    task = build_task(cfg)
    opt = build_optimizer(task, cfg.train)
    bases = [g["base_lr"] for g in opt.param_groups]
    assert len(set(bases)) > 2
    build_scheduler(opt, cfg.train, 10, start_step=5)
    factor = lr_lambda_factory(2, 10)(5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * factor for b in bases], rel=1e-12)


# ------------------------------------------------------------------------------------------------- LoRA
def _embed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tok = model.tokenizer(["a red circle", "the blue square emoji", "a photo of a dog"])
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tok["text_ids"], tok["attention_mask"])


@pytest.mark.parametrize("text", ["openclip", "hf"])
def test_lora_targets_both_towers_and_merge_equals_unmerged(text, bert_dir):
    """Adapters sit on the attention and MLP projections of both towers (open_clip's nn.MultiheadAttention
    included); with non-zero adapters the merged plain model computes the same embeddings (<= 1e-5)."""
    from mmfm.models.lora import has_lora, merge_lora

    spec = {"name": "tiny"} if text == "openclip" else tiny_hf_model(bert_dir)
    model = build_model({**spec, "lora": {"r": 4, "alpha": 8}})
    names = {n.rsplit(".lora_", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    if text == "openclip":
        assert {"text.transformer.resblocks.0.attn", "text.transformer.resblocks.1.attn",      # q, k, v
                "text.transformer.resblocks.1.mlp.c_fc", "text.transformer.resblocks.1.mlp.c_proj"} <= names
    else:
        assert {"text.transformer.encoder.layer.0.attention.self.query",
                "text.transformer.encoder.layer.1.attention.output.dense",
                "text.transformer.encoder.layer.1.intermediate.dense"} <= names
    assert {"visual.trunk.blocks.0.attn.qkv", "visual.trunk.blocks.0.attn.proj", "visual.trunk.blocks.1.mlp.fc1",
            "visual.trunk.blocks.1.mlp.fc2"} <= names
    assert not any(n.startswith(("image_proj", "logit_scale")) for n in names)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.2)                              # B = 0 at init would make the check trivial
    before_img, before_txt = _embed(model)
    merge_lora(model)
    assert not has_lora(model) and model.model_cfg.lora is None
    assert not any("lora" in k or "base_layer" in k for k in model.state_dict())
    after_img, after_txt = _embed(model)
    assert (before_img - after_img).abs().max() <= 1e-5 and (before_txt - after_txt).abs().max() <= 1e-5
    assert (before_img - _embed(build_model(spec))[0]).abs().max() > 1e-3     # the adapters did change it


def test_lora_config_errors():
    with pytest.raises(ConfigError, match="model.lora.r: must be >= 1"):
        build_model({"name": "tiny", "lora": {"r": 0}})
    with pytest.raises(ConfigError, match="no module 'vision'.*visual"):
        build_model({"name": "tiny", "lora": {"towers": ["vision"]}})
    with pytest.raises(ConfigError, match="tower 'text' matches model.lora.targets"):
        build_model({"name": "tiny", "lora": {"targets": ["qkv"]}})       # no qkv in open_clip's text blocks
    with pytest.raises(ConfigError, match="model.lora.dropout: the q/k/v adapters of nn.MultiheadAttention"):
        build_model({"name": "tiny", "lora": {"dropout": 0.1}})
    build_model({"name": "tiny", "lora": {"dropout": 0.1, "targets": ["qkv", "c_fc"]}})   # Linear layers take it
    with pytest.raises(ConfigError, match="model.lora: LoRA fine-tuning is for CLIP models"):
        build_model({"name": "tiny_captioner", "lora": {}})


# ------------------------------------------------------------------------------------------------ WiSE-FT
def test_interpolate_weights_endpoints_and_middle():
    from mmfm.models.wiseft import interpolate_weights

    a = {"w": torch.randn(4, 3), "n": torch.tensor(3)}
    b = {"w": torch.randn(4, 3), "n": torch.tensor(7)}
    assert torch.equal(interpolate_weights(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate_weights(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate_weights(a, b, 0.5)["w"], (a["w"] + b["w"]) / 2, atol=1e-7)
    assert interpolate_weights(a, b, 0.5)["n"].item() == 7              # integer buffers: the fine-tuned one
    with pytest.raises(ConfigError, match=r"alpha: must be in \[0, 1\]"):
        interpolate_weights(a, b, 1.5)
    with pytest.raises(ConfigError, match="only fine-tuned \\['x'\\]"):
        interpolate_weights(a, {**b, "x": torch.zeros(1)}, 0.5)
    assert math.isclose(float(interpolate_weights({"s": torch.tensor(1.0)}, {"s": torch.tensor(3.0)}, 0.25)["s"]),
                        1.5)
