"""The Rust CLIP BPE (mmfm.data.openclip_bpe) gives open_clip's SimpleTokenizer ids, token for token."""
import sys

import pytest
import torch

from caption_corpus import caption_corpus
from mmfm.data import openclip_bpe
from mmfm.data.tokenizers import WrappedOpenCLIPTokenizer, build_tokenizer


@pytest.fixture(scope="module")
def corpus():
    texts = caption_corpus(n_generated=2000)
    assert len(texts) > 2500
    return texts


def test_rust_bpe_ids_equal_open_clip_on_varied_captions(corpus):
    """Emoji names, entities, mojibake, controls, CJK, case-folding letters, literal special tokens, long
    texts: the padded, truncated ids equal open_clip's for every string (each cleaning rule of the fast path
    is needed: dropping the long-s rule, the special-token fallback or ftfy each breaks dozens of these strings)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = build_tokenizer("openclip", context_length=77)
    assert tok._bpe.uses_rust
    ref = SimpleTokenizer(context_length=77)(corpus)
    out = tok(corpus)
    bad = [i for i in range(len(corpus)) if not torch.equal(out["text_ids"][i], ref[i])]
    assert not bad, f"{len(bad)} strings differ, first: {corpus[bad[0]]!r}"
    assert (ref[:, -1] != 0).any()                          # some strings were truncated (eos kept last)
    last = out["attention_mask"].sum(1) - 1                 # the mask ends at each row's eos
    assert torch.equal(out["text_ids"].gather(1, last[:, None]).squeeze(1), torch.full_like(last, tok.eos_token_id))


def test_wrapped_openclip_model_tokenizer_takes_the_rust_path(corpus):
    import open_clip

    tok = WrappedOpenCLIPTokenizer("ViT-B-32")
    assert tok._bpe is not None and tok._bpe.uses_rust
    texts = corpus[::10]
    assert torch.equal(tok(texts, context_length=32)["text_ids"], open_clip.get_tokenizer("ViT-B-32")(texts, 32))


def test_without_tokenizers_package_falls_back_to_python_bpe(monkeypatch, corpus):
    from open_clip.tokenizer import SimpleTokenizer

    monkeypatch.setitem(sys.modules, "tokenizers", None)   # import tokenizers -> ImportError
    openclip_bpe._rust_model.cache_clear()
    try:
        tok = build_tokenizer("openclip", context_length=20)
        assert not tok._bpe.uses_rust
        texts = corpus[:200]
        assert torch.equal(tok(texts)["text_ids"], SimpleTokenizer(context_length=20)(texts))
    finally:
        openclip_bpe._rust_model.cache_clear()


def test_oniguruma_and_regex_classes_agree_on_every_assigned_character():
    """The Rust path's premise: Oniguruma's \\p{L}, \\p{N} and \\s (with open_clip's regex) split exactly like the
    ``regex`` module wherever this Python's Unicode database assigns the character (newer ones fall back)."""
    import unicodedata

    import regex
    from tokenizers import Regex, pre_tokenizers

    chars = "".join(chr(c) for c in range(0x80, 0x110000)
                    if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co"))
    for cls in (r"\p{L}", r"\p{N}", r"\s"):
        ours = pre_tokenizers.Split(Regex(cls), behavior="removed", invert=True).pre_tokenize_str(chars)
        theirs = regex.findall(cls, chars)
        assert "".join(p for p, _ in ours) == "".join(theirs), cls
    assert not openclip_bpe.needs_python_bpe("a photo of a cat") and openclip_bpe.needs_python_bpe("x\U000323b0")
