"""generate.alt_text.person_attributes: what alt text may state about a person (skin tone, gender, age), on
constructed captions; the default (all three) leaves captions as they were."""
import pytest

from mmfm.config import ConfigError, load_experiment
from mmfm.config.caption import AltTextConfig
from mmfm.generate import to_alt_text

CASES = [  # caption, alt text with none of the three allowed
    ("Flag: medium-light skin tone.", "Flag."),                     # the demo's captioner, from the issue
    ("Person in tuxedo: medium-dark skin tone.", "Person in tuxedo."),
    ("an elderly man riding a bike", "A person riding a bike."),
    ("a young woman with her dog", "A person with their dog."),
    ("a dark-skinned boy playing football", "A child playing football."),
    ("A man and a woman, with light skin tone, smiling", "A person and a person, smiling."),
    ("a woman with dark skin smiling", "A person smiling."),
    ("two teenagers on a bench", "Two people on a bench."),
    ("a 30-year-old man at his desk", "A person at their desk."),
    ("a female doctor", "A doctor."),
    ("he is holding a cup", "They are holding a cup."),
]
UNTOUCHED = ["an old building next to a young tree", "a man with a light blue shirt", "a medium dog on the grass",
             "a dark room with a light on"]


@pytest.mark.parametrize("caption,neutral", CASES)
def test_attributes_left_out_are_removed_or_made_neutral(caption, neutral):
    assert to_alt_text(caption, AltTextConfig(person_attributes=[])) == neutral
    assert to_alt_text(caption) == to_alt_text(caption, AltTextConfig(person_attributes=["skin_tone", "gender",
                                                                                          "age"]))


def test_each_attribute_is_its_own_setting():
    cap = "an elderly dark-skinned woman with her son"
    only = {a: to_alt_text(cap, AltTextConfig(person_attributes=[a])) for a in ("skin_tone", "gender", "age")}
    assert only["skin_tone"] == "A dark-skinned person with their child."
    assert only["gender"] == "A woman with her son."
    assert only["age"] == "An elderly person with their child."
    assert to_alt_text(cap) == "An elderly dark-skinned woman with her son."          # default: unchanged


@pytest.mark.parametrize("caption", UNTOUCHED)
def test_words_about_things_stay(caption):
    plain = to_alt_text(caption)
    assert to_alt_text(caption, AltTextConfig(person_attributes=["gender"])) == plain
    if "man" not in caption:
        assert to_alt_text(caption, AltTextConfig(person_attributes=[])) == plain


def test_the_setting_is_validated_and_set_from_yaml():
    cfg = load_experiment(data={"generate": {"alt_text": {"person_attributes": ["age"]}}})
    assert cfg.generate.alt_text.person_attributes == ["age"]
    with pytest.raises(ConfigError, match="person_attributes: unknown attribute 'race'"):
        load_experiment(data={"generate": {"alt_text": {"person_attributes": ["race"]}}})
