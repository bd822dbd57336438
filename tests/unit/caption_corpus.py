"""A large, varied, deterministic caption set for tokenizer-equality tests (emoji names, mojibake, entities...)."""
import os
import random

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"

WORDS = ["a", "photo", "of", "the", "dog", "cat's", "they're", "we've", "I'm", "you'll", "he'd", "DON'T", "Ca'S",
         "naïve", "café", "Über", "straße", "İstanbul", "ǅemal", "ﬁsh", "ﬅar", "'ſ", "'K", "ＡＢＣ１２３", "東京タワー",
         "北京", "한국어", "ภาษาไทย", "हिन्दी", "العربية", "Ελληνικά", "русский", "z̴a̷l̸g̵o", "e\u0301", "🐱", "👩‍👩‍👧",
         "🇫🇷", "👍🏽", "❤️", "x²", "½", "Ⅻ", "٣", "१२३", "3.14", "1,000,000", "2024-01-01", "#hashtag", "@user",
         "http://example.com/a?b=c&d=e", "C++", "e-mail", "rock'n'roll", "«quoted»", "“curly”", "‘single’", "—", "…",
         "&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;", "&#x1F600;", "&nbsp;", "&copy;",
         "AT&T", "a&b", "<b>tag</b>", "cafÃ©", "Ã¼ber", "â€œquotedâ€\x9d", "donâ€™t", "Ã©tÃ©", "\x1b[31mred\x1b[0m",
         "nul\x00byte", "bell\x07", "vt\x0bsep", "fs\x1csep", "del\x7f", "\ufeffbom", "zero\u200bwidth", "\u2028",
         "<start_of_text>", "<end_of_text>", "!!<end_of_text>", "<START_OF_TEXT>", "__init__", "snake_case", "ALLCAPS",
         "MiXeD", "<ſtart_of_text>", "x<ſtart_of_text>y", "'ſ'ſ", "\u0558\ua7ce", "\U00018e00\U000323b0", "\U00011de3",
         "ſ", "ﬀ", "Ǳ", "ß", "ẞ", "µ", "Ω", "K", "Å", "ı", "ŉ", "ΐ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟙𝟚𝟛", "\U0001F9D1\u200d\U0001F52C"]
PUNCT = list(".,;:!?-()[]{}\"'/\\|*+=~^%$#@`_<>") + ["...", "!!!", "?!", "''", "'''", "--"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", " \u00a0 ", "\u3000", "\u2003", "\x0c", "\x85", "   \t \n "]


def _emoji_lines() -> list[str]:
    if not os.path.exists(EMOJI_TEST):
        return []
    out = []
    with open(EMOJI_TEST, encoding="utf-8") as f:
        for line in f:
            if "#" in line and not line.startswith("#"):
                out.append(line.split("#", 1)[1].strip())          # "😀 E1.0 grinning face"
            elif line.startswith("# subgroup:") or line.startswith("# group:"):
                out.append(line[2:].strip())
    return out


def caption_corpus(n_generated: int = 3000, seed: int = 0) -> list[str]:
    """All CLDR emoji lines (emoji + name) and ``n_generated`` random captions mixing the pools above."""
    rng = random.Random(seed)
    pools = WORDS + PUNCT
    texts = _emoji_lines()
    for i in range(n_generated):
        n = rng.choice([0, 1, 2, 3, 5, 8, 13, 40]) if i % 50 else rng.randint(80, 400)   # some very long
        parts = []
        for _ in range(n):
            tok = rng.choice(pools) if rng.random() < 0.7 else str(rng.randint(0, 10 ** rng.randint(1, 9)))
            if rng.random() < 0.2:
                tok = tok.upper() if rng.random() < 0.5 else tok.title()
            parts.append(tok)
            parts.append(rng.choice(SPACES) if rng.random() < 0.3 else ("" if rng.random() < 0.3 else " "))
        texts.append("".join(parts))
    return texts
