r"""open_clip's CLIP BPE run by the Rust ``tokenizers`` library, token-for-token identical to
``open_clip.tokenizer.SimpleTokenizer`` (proved on thousands of varied strings in tests/unit/test_openclip_bpe.py).

The model is built from the vocabulary and merges open_clip ships (``bpe_simple_vocab_16e6.txt.gz``): the same
pre-tokenization regex, byte-level alphabet, ``</w>`` end-of-word suffix and merge ranks. The text cleaning stays
in Python, because ftfy's repairs have no Rust equivalent: a text goes through open_clip's own
``ftfy.fix_text`` + double ``html.unescape`` unless it is plain printable ASCII without ``&`` (where ftfy and
html.unescape provably change nothing), then whitespace runs collapse and it is lowercased, as open_clip does.

The regex runs in Oniguruma (Rust) instead of the ``regex`` module: open_clip's ``re.IGNORECASE`` only matters
for ``'ſ`` (long s folds to s; the text is already lowercased), spelled out as ``'[sſ]``, and the two engines'
``\p{L}``/``\p{N}``/``\s`` agree on every character this Python's Unicode database assigns (a test checks all of
them). Texts the Rust path cannot reproduce exactly fall back to ``SimpleTokenizer.encode``: a character newer
than that database (the ``regex`` module may know it as a letter, Oniguruma may not) or a literal
``<start_of_text>``/``<end_of_text>`` (which open_clip's regex only sometimes treats as a special token). So does
everything when ``tokenizers`` is not installed.
"""
from __future__ import annotations

import functools
import gzip
import re
import unicodedata

__all__ = ["FastCLIPBPE", "PATTERN", "clean_lower", "needs_python_bpe"]

# Printable ASCII minus "&", plus the whitespace controls ftfy keeps (\t \n \x0c \r): ftfy.fix_text and
# html.unescape are the identity on such text (no entity, no mojibake, no control or terminal-escape character).
_NEEDS_FTFY = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")
_SPECIALS = ("<start_of_text>", "<end_of_text>")
# open_clip's pre-tokenization regex. It is compiled with re.IGNORECASE there; on lowercased text the only
# character that folds onto its literals is U+017F long s ('ſ -> 's). "(?i)" in Oniguruma would cost 3x.
PATTERN = r"'[sſ]|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def clean_lower(text: str) -> str:
    """open_clip's ``_clean_lower`` (ftfy + html unescape, whitespace collapse, lowercase), ftfy skipped where it
    cannot change the text."""
    if _NEEDS_FTFY.search(text) is None:
        return " ".join(text.split()).lower()
    from open_clip.tokenizer import _clean_lower
    return _clean_lower(text)


@functools.lru_cache(maxsize=1)
def _rust_model():
    """The Rust BPE tokenizer (built once per process), or None when ``tokenizers`` is not installed."""
    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    except ImportError:
        return None
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:           # the same slice of merges SimpleTokenizer reads
        merges = [tuple(m.split()) for m in f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + list(_SPECIALS)
    bpe = models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


@functools.lru_cache(maxsize=1)
def _special_re():
    import regex
    return regex.compile("|".join(_SPECIALS), regex.IGNORECASE)   # as open_clip matches them


def needs_python_bpe(cleaned: str) -> bool:
    """True for a cleaned text the Rust path may tokenize differently: a literal special token (in any case
    open_clip's regex folds) or a character this Python's Unicode database does not assign."""
    if "<" in cleaned and _special_re().search(cleaned) is not None:
        return True
    return not cleaned.isascii() and any(unicodedata.category(c) == "Cn" for c in set(cleaned) if ord(c) > 0x7F)


class FastCLIPBPE:
    """``encode_batch(texts) -> list of id lists`` (no sot/eot), equal to ``[SimpleTokenizer.encode(t) ...]``."""

    def __init__(self, simple_tokenizer):
        self._slow = simple_tokenizer
        self._rust = _rust_model()

    @property
    def uses_rust(self) -> bool:
        return self._rust is not None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._rust is None:
            return [self._slow.encode(t) for t in texts]
        cleaned = [clean_lower(t) for t in texts]
        out: list[list[int] | None] = [None] * len(texts)
        todo, where = [], []
        for i, text in enumerate(cleaned):
            if needs_python_bpe(text):
                out[i] = self._slow.encode(texts[i])
            else:
                todo.append(text)
                where.append(i)
        if todo:
            for i, enc in zip(where, self._rust.encode_batch_fast(todo, add_special_tokens=False)):
                out[i] = enc.ids
        return out  # type: ignore[return-value]
