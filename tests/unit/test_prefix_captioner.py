"""LLaVA-style prefix captioners (model.decoder.fusion: prefix) on tiny causal LMs of three families (GPT-2, Llama,
Qwen2), each saved by transformers' save_pretrained with an offline tokenizer: overfit one batch, padding
invariance, greedy generate == a manual argmax loop, VQA, checkpoint round trip, the LM exported back, LoRA,
and the shipped recipes in configs/experiments/prefix/."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmfm.config import load_experiment
from mmfm.data.collate import collate_dicts
from mmfm.tasks import build_task
from tests.helpers import word_tokenizer

CAPTIONS = ["a red square on white", "a green field", "two blue birds flying over the sea"]
COLORS = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
WORDS = sorted({w for c in CAPTIONS for w in c.split()} | {"picture", "of", "what", "color", "is", "it", "?",
                                                           "red", "green", "blue", "question", "answer", ":"})
ROOT = Path(__file__).resolve().parents[2]
LM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
          max_position_embeddings=64)
FAMILIES = ("gpt2", "llama", "qwen2")
VISION = {"timm_model": "vit_tiny_patch16_224", "image_size": 32,
          "timm_kwargs": {"patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}}

pytestmark = pytest.mark.usefixtures("one_thread")
_TOKENIZER: dict = {}           # the word-level tokenizer folder (set by the lm_dirs fixture)


def _lm_config(family: str, vocab: int):
    import transformers as T
    ids = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **ids)
    if family == "llama":
        return T.LlamaConfig(num_key_value_heads=2, **LM, **ids)
    return T.Qwen2Config(num_key_value_heads=2, **LM, **ids)


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    """One folder per family: the LM (random weights) saved by transformers; the word-level tokenizer in a folder
    of its own (beside a qwen2 config.json, AutoTokenizer would open it as Qwen2's BPE tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = word_tokenizer(tmp_path_factory.mktemp("tok"), WORDS)
    out = {"tokenizer": tok}
    _TOKENIZER["dir"] = tok
    for family in FAMILIES:
        d = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(_lm_config(family, len(AutoTokenizer.from_pretrained(tok)))).save_pretrained(d)
        out[family] = str(d)
    return out


def _cfg(lm_dir: str, task: str = "caption", **decoder):
    tok = _TOKENIZER["dir"]
    return load_experiment(data={
        "task": {"name": task, "vqa": {"max_answers": 2}},
        "model": {"kind": "captioner", "vision": VISION, "embed_dim": 32,
                  "decoder": {"fusion": "prefix", "hf_path": lm_dir, "tokenizer": tok, "max_length": 16,
                              **decoder}},
        "data": {"train_augment": False}})


def _batch(task, captions=CAPTIONS):
    proc = task.processor(train=False)
    return collate_dicts([proc({"image": Image.new("RGB", (40, 40), c), "txt": t, "__key__": f"k{i}"})
                          for i, (c, t) in enumerate(zip(COLORS, captions))])


@pytest.mark.parametrize("family", FAMILIES)
def test_overfit_one_batch_then_greedy_decodes_the_captions(lm_dirs, family):
    from mmfm.generate import caption_tensors
    torch.manual_seed(0)
    task = build_task(_cfg(lm_dirs[family]))
    batch = _batch(task)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(120):
        loss = task(batch)["loss"]
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.05 < first
    task.eval()
    assert caption_tensors(task.model, batch["image"]) == CAPTIONS


def test_image_positions_and_prompt_are_masked_by_the_task_and_padding_does_not_change_the_loss(lm_dirs):
    from mmfm.tasks.caption import image_masked, shifted_token_loss
    torch.manual_seed(0)
    task = build_task(_cfg(lm_dirs["llama"], prompt="a picture of")).eval()
    batch = _batch(task)
    out = task.model(image=batch["image"], text_ids=batch["text_ids"], attention_mask=batch["attention_mask"])
    n = out["image_positions"]
    assert n == 17 and out["logits"].shape[1] == n + batch["text_ids"].shape[1]
    labels = image_masked(batch["labels"], out)
    assert (labels[:, : n + 4] == -100).all()            # image tokens, bos and the 3 prompt words
    with torch.no_grad():
        padded = [float(task({k: v[i: i + 1] for k, v in batch.items() if k != "key"})["loss"]) for i in range(3)]
        short = []
        for i in range(3):
            m = int(batch["attention_mask"][i].sum())
            one = {k: batch[k][i: i + 1, :m] for k in ("text_ids", "attention_mask", "labels")}
            short.append(float(task({**one, "image": batch["image"][i: i + 1]})["loss"]))
        whole = task(batch)["loss"]
    assert padded == pytest.approx(short, abs=1e-5)
    per_token = shifted_token_loss(out["logits"], labels)
    assert float(whole) == pytest.approx(float(per_token), abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_a_manual_argmax_loop(lm_dirs, family):
    torch.manual_seed(0)
    model = build_task(_cfg(lm_dirs[family])).model.eval()
    images = torch.randn(2, 3, 32, 32)
    prefix = [model.encode_plain("a picture of")] * 2
    got = model.generate_ids(images, prefix, max_new_tokens=6, min_new_tokens=6, num_beams=1, do_sample=False)
    seq = torch.tensor([model.sequence(p, None)[0] for p in prefix])
    with torch.no_grad():
        for _ in range(6):
            logits = model(image=images, text_ids=seq, attention_mask=torch.ones_like(seq))["logits"][:, -1]
            logits[:, model.tokenizer.eos_token_id] = -float("inf")        # min_new_tokens
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert got.tolist() == seq[:, -6:].tolist()


def test_the_same_model_answers_vqa(lm_dirs):
    from mmfm.generate import answer_questions, rank_answers
    torch.manual_seed(0)
    task = build_task(_cfg(lm_dirs["qwen2"], task="vqa"))
    proc = task.processor(train=True)
    rows = [proc({"image": Image.new("RGB", (40, 40), c), "json": {"question": "what color is it ?",
                                                                  "answers": [a, a]}, "__key__": f"q{i}"})
            for i, (c, a) in enumerate(zip(COLORS, ("red", "green", "blue")))]
    batch = collate_dicts(rows)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(80):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.eval()
    questions = ["what color is it ?"] * 3
    assert [a.strip() for a in answer_questions(task.model, batch["image"], questions)] == ["red", "green", "blue"]
    ranked = rank_answers(task.model, batch["image"], questions, ["red", "green", "blue"])
    assert [r[0]["answer"] for r in ranked] == ["red", "green", "blue"]


def test_checkpoint_round_trip_and_the_lm_exported_back_to_transformers(lm_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    from mmfm.models.checkpoint import load, save_pretrained
    torch.manual_seed(0)
    cfg = _cfg(lm_dirs["gpt2"])
    model = build_task(cfg).model.eval()
    with torch.no_grad():                        # make the projector and LM differ from their starting weights
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_pretrained(model, cfg, tmp_path / "ckpt")
    again = load(tmp_path / "ckpt").eval()
    batch = _batch(build_task(cfg, model=model))
    with torch.no_grad():
        a = model(image=batch["image"], text_ids=batch["text_ids"], attention_mask=batch["attention_mask"])["logits"]
        b = again(image=batch["image"], text_ids=batch["text_ids"], attention_mask=batch["attention_mask"])["logits"]
    assert type(again).__name__ == "PrefixCaptioner" and torch.equal(a, b)
    from mmfm.cli import main
    assert main(["export", str(tmp_path / "ckpt"), "--format", "transformers", "--out", str(tmp_path / "lm")]) == 0
    info = json.loads((tmp_path / "lm" / "mmfm_export.json").read_text())
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    with torch.no_grad():
        embeds, mask = model._inputs(model.image_tokens(batch["image"]), batch["text_ids"], batch["attention_mask"])
        c = lm(inputs_embeds=embeds, attention_mask=mask).logits
    assert (a - c).abs().max() <= 1e-5 and info["max_abs_diff"] <= 1e-5
    assert (tmp_path / "lm" / "tokenizer.json").is_file() and (tmp_path / "lm" / "projector.safetensors").is_file()


def test_lora_on_the_lm_trains_only_adapters_and_projector_trains_alone_when_locked(lm_dirs):
    torch.manual_seed(0)
    cfg = _cfg(lm_dirs["llama"], lock=True)
    cfg.model.vision.lock = True
    model = build_task(cfg).model
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"proj"}
    cfg.model.lora = load_experiment(data={"model": {"lora": {"towers": ["decoder"]}}}).model.lora
    lora = build_task(cfg).model
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable if not n.startswith("proj."))
    assert any(n.startswith("decoder.") for n in trainable) and "proj.0.weight" in trainable


def test_a_lora_prefix_captioner_on_gpt2_saves_and_loads_merged(lm_dirs, tmp_path):
    from mmfm.models.checkpoint import load, save_pretrained
    torch.manual_seed(0)
    cfg = _cfg(lm_dirs["gpt2"])                      # GPT-2's projections are Conv1D: peft adapts them too
    cfg.model.lora = load_experiment(data={"model": {"lora": {"towers": ["decoder"]}}}).model.lora
    model = build_task(cfg).model.eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    save_pretrained(model, cfg, tmp_path / "ckpt")
    merged = load(tmp_path / "ckpt").eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[1, 5, 6, 2]])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = model(image=images, text_ids=ids)["logits"]
        b = merged(image=images, text_ids=ids)["logits"]
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs/experiments/prefix").glob("*.yaml")))
def test_shipped_prefix_recipes_load_and_build(lm_dirs, name):
    cfg = load_experiment(ROOT / "configs/experiments/prefix" / f"{name}.yaml",
                          [f"model.decoder.hf_path={lm_dirs['gpt2']}",
                           f"model.decoder.tokenizer={lm_dirs['tokenizer']}"])
    task = build_task(cfg)
    trainable = {n.split(".")[0] for n, p in task.model.named_parameters() if p.requires_grad}
    assert "proj" in trainable
    if name == "projector":
        assert trainable == {"proj"}
    assert name in ("projector", "lora", "full")


def test_prefix_recipes_are_the_three_documented_ones():
    assert sorted(p.stem for p in (ROOT / "configs/experiments/prefix").glob("*.yaml")) == ["full", "lora",
                                                                                           "projector"]
