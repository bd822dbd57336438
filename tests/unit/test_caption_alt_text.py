"""Alt-text conventions and decoding-settings mapping (pure functions, no model)."""
import pytest

from mmfm.config import ConfigError, from_dict
from mmfm.config.caption import AltTextConfig, GenerateConfig
from mmfm.generate import clean_caption, generation_kwargs, to_alt_text


@pytest.mark.parametrize("raw,want", [
    ("an image of a dog on a beach", "A dog on a beach."),
    ("A picture of two cats .", "Two cats."),
    ("a photo of a red bus", "A red bus."),
    ("this is a photograph showing a man 's hat", "A man's hat."),
    ("a painting of a house", "A painting of a house."),          # the medium is information: kept
    ("image of", "Image of."),                                    # nothing left after the prefix: keep it all
    ("", ""),
    ("a dog ( brown ) runs !", "A dog (brown) runs!"),
])
def test_alt_text_prefix_and_case(raw, want):
    assert to_alt_text(raw) == want


def test_length_limit_cuts_at_a_word_and_drops_dangling_words():
    text = "a man riding a wave on top of a surfboard in the ocean with a big smile and"
    out = to_alt_text(text, AltTextConfig(max_chars=40))
    # 40 chars ends inside "surfboard": cut at the word, then "of a" dangles and goes
    assert out == "A man riding a wave on top." and len(out) <= 40
    assert to_alt_text(text, AltTextConfig(max_chars=0, sentence_case=False)) == text


def test_options_can_be_turned_off():
    alt = AltTextConfig(strip_prefix=False, sentence_case=False, max_chars=0)
    assert to_alt_text("an image of a dog", alt) == "an image of a dog"
    assert clean_caption("  a   dog  .") == "a dog."
    with pytest.raises(ConfigError, match="max_chars"):
        from_dict(AltTextConfig, {"max_chars": -1})


def test_generation_kwargs_per_mode():
    greedy = generation_kwargs(GenerateConfig())
    assert greedy["num_beams"] == 1 and not greedy["do_sample"] and "temperature" not in greedy
    beam = generation_kwargs(GenerateConfig(num_beams=4, no_repeat_ngram_size=3, length_penalty=0.8))
    assert beam["num_beams"] == 4 and beam["no_repeat_ngram_size"] == 3 and beam["length_penalty"] == 0.8
    sample = generation_kwargs(GenerateConfig(do_sample=True, top_p=0.9, temperature=0.7), max_new_tokens=5)
    assert sample["do_sample"] and sample["top_p"] == 0.9 and sample["max_new_tokens"] == 5
    with pytest.raises(ConfigError, match="min_new_tokens"):
        from_dict(GenerateConfig, {"min_new_tokens": 30, "max_new_tokens": 20})
