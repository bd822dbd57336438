"""The captioner and CaptionTask on a tiny real model: layout/masking, padding invariance, token-id hygiene,
width projection/refusal, freezing, generation modes (cache on/off, beams, sampling, batching) and an
overfit-one-batch run that must greedy-decode its captions exactly."""
import pickle

import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError, load_experiment
from mmfm.data.collate import collate_dicts
from mmfm.tasks import build_task
from tests.helpers import HEADED_TOWERS, headed_captioner, word_tokenizer

CAPTIONS = ["a red square on white", "a green field", "two blue birds flying over the sea"]
COLORS = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
WORDS = sorted({w for c in CAPTIONS for w in c.split()} | {"picture", "of", "cat", "dog"})

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("wordtok"), WORDS)


def _cfg(model=None, tokenizer=None, **task):
    model = dict(model or {"name": "tiny_captioner"})
    if tokenizer:
        model["decoder"] = {**model.get("decoder", {}), "tokenizer": tokenizer}
    return load_experiment(data={"task": {"name": "caption", **task}, "model": model,
                                 "data": {"train_augment": False}})


@pytest.fixture(scope="module")
def task(tok_dir):
    torch.manual_seed(0)
    return build_task(_cfg(tokenizer=tok_dir))


def _batch(task, captions=CAPTIONS):
    proc = task.processor(train=False)
    return collate_dicts([proc({"image": Image.new("RGB", (40, 40), c), "txt": t, "__key__": f"k{i}"})
                          for i, (c, t) in enumerate(zip(COLORS, captions))])


def test_processor_layout_and_masks(task):
    proc = task.processor(train=False)
    proc = pickle.loads(pickle.dumps(proc))          # loader workers get a pickled copy
    out = proc({"image": Image.new("RGB", (50, 30)), "txt": "a cat", "__key__": "x"})
    tok = task.tokenizer
    ids, mask, labels = out["text_ids"], out["attention_mask"], out["labels"]
    n = int(mask.sum())
    assert ids[0] == tok.bos_token_id and ids[n - 1] == tok.eos_token_id
    assert labels[0] == -100 and (labels[n:] == -100).all() and (labels[1:n] == ids[1:n]).all()
    assert out["image"].shape == (3, 32, 32) and out["key"] == "x"
    with pytest.raises(KeyError, match="'y'.*caption"):
        proc({"image": Image.new("RGB", (8, 8)), "txt": "  ", "__key__": "y"})


def test_prompt_tokens_are_masked():
    # the default tiny_captioner: open_clip's BPE tokenizer
    cfg = _cfg({"name": "tiny_captioner", "decoder": {"prompt": "a picture of"}})
    t = build_task(cfg)
    out = t.processor(False)({"image": Image.new("RGB", (8, 8)), "txt": "a dog", "__key__": "p"})
    n_prompt = 1 + len(t.model.encode_plain("a picture of"))
    assert (out["labels"][:n_prompt] == -100).all()
    assert (out["labels"][n_prompt: n_prompt + 2] == out["text_ids"][n_prompt: n_prompt + 2]).all()


def test_padded_and_unpadded_batches_give_the_same_loss(task):
    batch = _batch(task)
    task.eval()
    with torch.no_grad():
        full = task(batch)["loss"]
        longest = int(batch["attention_mask"].sum(1).max())
        trimmed = {**batch, **{k: batch[k][:, :longest] for k in ("text_ids", "attention_mask", "labels")}}
        trim = task(trimmed)["loss"]
        # one sample alone, unpadded, vs the same sample padded to max_length
        n = int(batch["attention_mask"][1].sum())
        alone = {"image": batch["image"][1:2], **{k: batch[k][1:2, :n] for k in ("text_ids", "attention_mask", "labels")}}
        padded = {"image": batch["image"][1:2], **{k: batch[k][1:2] for k in ("text_ids", "attention_mask", "labels")}}
        a, p = task(alone)["loss"], task(padded)["loss"]
    task.train()
    assert torch.allclose(full, trim, atol=1e-5) and torch.allclose(a, p, atol=1e-5)


def test_tokenizer_without_eos_fails_at_build(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "dog": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(tmp_path)
    cfg = _cfg({"name": "tiny_captioner", "decoder": {"tokenizer": str(tmp_path)}})
    with pytest.raises(ConfigError, match="eos"):
        build_task(cfg)


def test_token_ids_checked_against_decoder_vocab():
    from mmfm.models.captioner import check_token_ids

    class Tok:
        name, vocab_size, pad_token_id, eos_token_id, bos_token_id = "toy", 10, 0, 1, None
    with pytest.raises(ConfigError, match="bos"):
        check_token_ids(Tok(), 100)
    Tok.bos_token_id = 2
    with pytest.raises(ConfigError, match="vocab_size >= 10"):
        check_token_ids(Tok(), 5)


def test_width_mismatch_projected_or_refused(tok_dir):
    wide = {"name": "tiny_captioner", "decoder": {"config_overrides": {"n_embd": 48, "n_layer": 1, "n_head": 2}}}
    m = build_task(_cfg(wide, tok_dir)).model
    assert isinstance(m.proj[0], torch.nn.Linear) and m.image_tokens(torch.zeros(1, 3, 32, 32)).shape[-1] == 48
    wide["decoder"]["projection"] = "none"
    with pytest.raises(ConfigError, match=r"32 wide.*hidden size is 48"):
        build_task(_cfg(wide, tok_dir))


def test_freezing_and_partial_unfreezing(tok_dir):
    m = build_task(_cfg({"name": "tiny_captioner", "vision": {"lock": True}}, tok_dir)).model
    assert not any(p.requires_grad for p in m.visual.parameters())
    assert all(p.requires_grad for p in m.decoder.parameters())
    m = build_task(_cfg({"name": "tiny_captioner", "vision": {"lock": True, "unlock_last_groups": 1}}, tok_dir)).model
    trainable = {n for n, p in m.visual.named_parameters() if p.requires_grad}
    assert trainable and all("blocks.0." not in n and "patch_embed" not in n for n in trainable)


@pytest.mark.parametrize("arch", sorted(HEADED_TOWERS))
def test_vision_tower_keeps_only_the_token_path(arch, tok_dir, tmp_path):
    """Every captioner parameter gets a gradient (DDP with find_unused_parameters: false needs it): timm's
    pooling head is dropped, the tokens are unchanged, and checkpoints that still hold the head load."""
    import mmfm
    from safetensors.torch import load_file, save_file

    from mmfm.models import TimmVisionTower, save_pretrained
    torch.manual_seed(0)
    task = build_task(_cfg(headed_captioner(arch), tok_dir))
    size = HEADED_TOWERS[arch]["image_size"]
    batch = _batch(task)
    batch["image"] = torch.nn.functional.interpolate(batch["image"], size=(size, size))
    task(batch)["loss"].backward()
    unused = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without a gradient: {unused}"

    v = HEADED_TOWERS[arch]
    full = TimmVisionTower(v["timm_model"], v["timm_kwargs"], image_size=size).eval()   # with timm's head
    visual = task.model.visual.eval()
    dropped = sorted(set(full.state_dict()) - set(visual.state_dict()))
    assert dropped and list(visual.obsolete_keys) == dropped
    visual.load_state_dict(full.state_dict())                 # strict: the head's tensors are ignored
    x = batch["image"]
    assert torch.equal(visual.forward_tokens(x), full.forward_tokens(x))
    with pytest.raises(RuntimeError, match="forward_tokens"):
        visual(x)
    # a checkpoint written before the head was dropped (it holds the head's tensors) loads strictly
    saved = save_pretrained(task.model, task.cfg, tmp_path / "ckpt")
    weights = load_file(str(saved / "model.safetensors"))
    weights.update({f"visual.{k}": full.state_dict()[k].contiguous() for k in dropped})
    save_file(weights, str(saved / "model.safetensors"))
    loaded = mmfm.load(str(saved)).eval()
    assert torch.equal(loaded.image_tokens(x), task.model.eval().image_tokens(x))


def test_generation_modes(task):
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_tensors

    m = task.model.eval()
    images = _batch(task)["image"]
    fixed = GenerateConfig(min_new_tokens=6, max_new_tokens=6)
    cached = caption_tensors(m, images, fixed)
    assert cached == caption_tensors(m, images, GenerateConfig(min_new_tokens=6, max_new_tokens=6, use_cache=False))
    one_by_one = [caption_tensors(m, images[i: i + 1], fixed)[0] for i in range(3)]
    assert cached == one_by_one                                    # batching changes nothing
    beams = GenerateConfig(num_beams=3, max_new_tokens=6, no_repeat_ngram_size=2, repetition_penalty=1.2)
    assert caption_tensors(m, images, beams) == caption_tensors(m, images, dict_replace(beams, use_cache=False))
    sample = GenerateConfig(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, max_new_tokens=6, seed=3)
    assert caption_tensors(m, images, sample) == caption_tensors(m, images, sample)
    task.train()


def test_generation_emits_no_warnings(task):
    """caption, VQA, eval and serve all decode through generate_ids: no FutureWarning (or any other) per call."""
    import warnings

    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import answer_questions, caption_tensors

    m = task.model.eval()
    images = _batch(task)["image"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for gen in (GenerateConfig(max_new_tokens=3), GenerateConfig(max_new_tokens=3, num_beams=2),
                    GenerateConfig(max_new_tokens=3, use_cache=False)):
            assert len(caption_tensors(m, images, gen)) == 3
        assert len(answer_questions(m, images, ["what color?"] * 3, GenerateConfig(max_new_tokens=2))) == 3
    task.train()


def dict_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_overfit_one_batch_then_greedy_decodes_exactly(tok_dir):
    torch.manual_seed(0)
    t = build_task(_cfg(tokenizer=tok_dir))
    batch = _batch(t)
    opt = torch.optim.AdamW(t.parameters(), lr=1e-2, weight_decay=0.0)
    m = t.model
    for step in range(1, 301):
        loss = t(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 and loss.item() < 0.1:
            m.eval()
            got = [m.decode(r) for r in m.generate_ids(batch["image"], [[]] * 3, max_new_tokens=12)]
            m.train()
            if got == CAPTIONS:
                break
    assert loss.item() < 0.1, loss.item()
    assert got == CAPTIONS


def test_coca_style_joint_loss(tok_dir):
    t = build_task(_cfg({"name": "tiny_captioner_coca"}, tok_dir, caption={"contrastive_weight": 0.5}))
    out = t(_batch(t))
    assert {"caption_loss", "contrastive_loss", "token_acc"} <= set(out)
    assert torch.allclose(out["loss"], out["caption_loss"] + 0.5 * out["contrastive_loss"])
    out["loss"].backward()
    assert t.model.text_proj.weight.grad.abs().sum() > 0 and t.model.image_proj.weight.grad.abs().sum() > 0
    assert t.model.proj[0].in_features == 32 and t.model.hidden_size == 48      # 32-wide tokens projected to 48
    with pytest.raises(ConfigError, match="contrastive_head"):
        build_task(_cfg(tokenizer=tok_dir, caption={"contrastive_weight": 0.5}))
