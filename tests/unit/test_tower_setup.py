"""One vocabulary and one set of rules for the towers of every model source (mmfm.models.tower_setup): tiny real
open_clip and transformers CLIP models lock, unlock and checkpoint exactly the tower their config section names,
and ``visual`` / ``text`` mean their towers in LoRA and in ``train.lr_groups`` as they do for mmfm's own CLIP."""
from __future__ import annotations

import json

import pytest
import torch

from mmfm.config import ConfigError
from mmfm.models import build_model
from mmfm.train.optim import param_groups as task_param_groups

pytestmark = pytest.mark.usefixtures("one_thread")

OC_TINY = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Model sections for a tiny open_clip model (its own config JSON) and a tiny transformers CLIPModel folder
    (saved by transformers, with a word tokenizer)."""
    import transformers as tf

    from tests.helpers import word_tokenizer

    d = tmp_path_factory.mktemp("towers")
    (d / "oc_tiny.json").write_text(json.dumps(OC_TINY))
    words = "a photo of red blue cat dog".split()
    word_tokenizer(d / "hf", words)
    text = dict(TINY, vocab_size=len(words) + 4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                eos_token_id=2)
    torch.manual_seed(0)
    tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=dict(TINY, image_size=32, patch_size=8),
                               projection_dim=24)).save_pretrained(d / "hf")
    return {"openclip": {"openclip": str(d / "oc_tiny.json")}, "hf": {"source": f"hf:{d / 'hf'}"},
            "mmfm": {"name": "tiny"}}


def param_groups(model, *args):
    """``train.optim.param_groups`` as the trainer calls it: on a task holding the model (lr_groups are relative to
    ``task.model``)."""
    task = torch.nn.Module()
    task.model = model
    return task_param_groups(task, *args)


def _checkpointing(model, kind: str) -> dict[str, bool]:
    """Whether each tower's layers run under activation checkpointing, read from the library's own flags."""
    if kind == "openclip":
        return {"visual": model.model.visual.transformer.grad_checkpointing,
                "text": model.model.transformer.grad_checkpointing}
    if kind == "hf":
        return {t: all(layer.gradient_checkpointing for layer in m.encoder.layers)
                for t, m in (("visual", model.model.vision_model), ("text", model.model.text_model))}
    return {"visual": model.visual.trunk.grad_checkpointing, "text": model.text.transformer.grad_checkpointing}


@pytest.mark.parametrize("kind", ["openclip", "hf", "mmfm"])
def test_grad_checkpointing_only_in_the_tower_that_asks(sources, kind):
    """The open_clip and transformers adapters used to turn it on in both towers when one asked."""
    for section, tower, other in (("vision", "visual", "text"), ("text", "text", "visual")):
        model = build_model({**sources[kind], section: {"grad_checkpointing": True}}, init_weights=False)
        assert _checkpointing(model, kind) == {tower: True, other: False}, (kind, section)
    model = build_model({**sources[kind], "vision": {"grad_checkpointing": True}}, init_weights=False)
    model.set_grad_checkpointing(False)
    assert _checkpointing(model, kind) == {"visual": False, "text": False}


@pytest.mark.parametrize("kind", ["openclip", "hf"])
def test_checkpointed_tower_gives_the_same_loss_and_gradients(sources, kind):
    torch.manual_seed(0)
    plain = build_model(sources[kind], init_weights=False).train()
    ckpt = build_model({**sources[kind], "vision": {"grad_checkpointing": True}}, init_weights=False).train()
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model.encode_image(image).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) <= 1e-6


@pytest.mark.parametrize("kind", ["openclip", "hf", "mmfm"])
@pytest.mark.parametrize("section", ["vision", "text"])
def test_unlock_last_groups_without_lock_is_refused_for_every_source(sources, kind, section):
    """The open_clip and transformers adapters used to ignore it (the whole tower trained)."""
    with pytest.raises(ConfigError, match=rf"model.{section}.unlock_last_groups: only meaningful with "
                                          rf"model.{section}.lock: true"):
        build_model({**sources[kind], section: {"unlock_last_groups": 1}}, init_weights=False)


@pytest.mark.parametrize("kind", ["openclip", "hf", "mmfm"])
def test_lock_with_unlocked_last_groups_trains_only_the_top_of_that_tower(sources, kind):
    model = build_model({**sources[kind], "vision": {"lock": True, "unlock_last_groups": 1}}, init_weights=False)
    visual = {n for n, p in model.named_parameters() if n.startswith(_paths(model, "visual"))}
    trainable = {n for n in visual if dict(model.named_parameters())[n].requires_grad}
    assert trainable and trainable != visual                            # partly unlocked
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(_paths(model, "text")))


def _paths(model, tower: str) -> tuple[str, ...]:
    return tuple(p for p in model.tower_paths[tower])


@pytest.mark.parametrize("kind", ["openclip", "hf", "mmfm"])
def test_lora_towers_visual_and_text_name_the_same_towers_for_every_source(sources, kind):
    """``towers: [visual, text]`` (the shipped finetune/lora.yaml) used to fail on an open_clip model: "no Linear or
    attention module in the blocks of tower 'visual'"."""
    model = build_model({**sources[kind], "lora": {"r": 2, "alpha": 4, "towers": ["visual", "text"]}},
                        init_weights=False)
    adapted = {n.split(".lora_", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted and all(".lora_A" in n or ".lora_B" in n for n, p in model.named_parameters() if p.requires_grad)
    for tower in ("visual", "text"):
        assert any(n.startswith(_paths(model, tower)) for n in adapted), (kind, tower, sorted(adapted)[:5])
    only = build_model({**sources[kind], "lora": {"r": 2, "alpha": 4, "towers": ["text"]}}, init_weights=False)
    assert not any(n.startswith(_paths(only, "visual")) for n, p in only.named_parameters() if p.requires_grad)


def test_lora_module_paths_still_work_and_unknown_names_list_the_towers(sources):
    model = build_model({**sources["openclip"], "lora": {"r": 2, "alpha": 4, "towers": ["model.visual"]}},
                        init_weights=False)
    assert any(n.startswith("model.visual.") and ".lora_A" in n for n, _ in model.named_parameters())
    with pytest.raises(ConfigError, match=r"no module 'vision' and no tower of that name \(its towers: visual, text"):
        build_model({**sources["hf"], "lora": {"towers": ["vision"]}}, init_weights=False)


@pytest.mark.parametrize("kind", ["openclip", "hf", "mmfm"])
def test_lr_groups_visual_and_text_name_the_same_towers_for_every_source(sources, kind):
    model = build_model(sources[kind], init_weights=False)
    lrs = {id(p): g["lr"] for g in param_groups(model, 0.1, 1.0, {"visual": 0.25, "text": 0.5}) for p in g["params"]}
    by_name = {n: lrs[id(p)] for n, p in model.named_parameters()}
    for tower, lr in (("visual", 0.25), ("text", 0.5)):
        names = [n for n in by_name if n.startswith(_paths(model, tower))]
        assert names and all(by_name[n] == lr for n in names), (kind, tower)
    assert by_name[next(n for n in by_name if n.endswith("logit_scale"))] == 1.0       # a head: train.lr
    if kind == "openclip":                # text parts outside any text module: the embeddings, the projection
        assert by_name["model.positional_embedding"] == by_name["model.text_projection"] == 0.5
    with pytest.raises(ConfigError, match=r"lr_groups.vision: .*its towers: visual, text"):
        param_groups(model, 0.1, 1.0, {"vision": 0.1})


def test_captioner_towers_are_vision_and_decoder():
    model = build_model("tiny_captioner", init_weights=False)
    lrs = {id(p): g["lr"] for g in param_groups(model, 0.1, 1.0, {"vision": 0.25, "decoder": 0.5}) for p in g["params"]}
    by_name = {n: lrs[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert all(v == 0.25 for n, v in by_name.items() if n.startswith("visual."))
    assert all(v == 0.5 for n, v in by_name.items() if n.startswith("decoder."))
    model = build_model({"name": "tiny_captioner", "vision": {"grad_checkpointing": True, "lock": True,
                                                              "unlock_last_groups": 1}}, init_weights=False)
    assert model.visual.trunk.grad_checkpointing
    assert any(p.requires_grad for p in model.visual.parameters())
    assert not all(p.requires_grad for p in model.visual.parameters())
