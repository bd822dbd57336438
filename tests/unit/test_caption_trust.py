"""Alt text a user can trust: degenerate captions are detected (constructed cases), marked or replaced by the
user's fallback, every caption carries its confidence (the mean token log-probability, checked against a
hand computation), and the service page shows the checkpoint's stored decoding settings."""
import pytest
import torch

from mmfm.config.caption import AltTextConfig, GenerateConfig
from mmfm.generate import caption_confidence, degenerate_reason, trust_fields

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("caption,prompt,reason", [
    ("", "", "empty"), ("  .  ", "", "empty"), ("A.", "", "one_word"), ("dog", "", "one_word"),
    ("a dog a dog a dog a dog", "", "repetition"), ("the the the cat", "", "repetition"),
    ("a picture of", "a picture of", "repeats_prompt"), ("Picture of a.", "a picture of", "repeats_prompt"),
    ("a brown dog runs on the grass.", "a picture of", None), ("Flag: medium-light skin tone.", "", None)])
def test_degenerate_reason_on_constructed_cases(caption, prompt, reason):
    assert degenerate_reason(caption, prompt) == reason


def test_low_confidence_and_fallback():
    assert degenerate_reason("a brown dog on grass", "", -3.0, min_confidence=-2.0) == "low_confidence"
    assert degenerate_reason("a brown dog on grass", "", -1.0, min_confidence=-2.0) is None
    marked = trust_fields("A.", -0.5, "", AltTextConfig(), True)
    assert marked == {"confidence": -0.5, "degenerate": "one_word"}                 # marked, alt text kept
    replaced = trust_fields("A.", -0.5, "", AltTextConfig(fallback="Photo"), True)
    assert replaced["alt_text"] == "Photo" and replaced["degenerate"] == "one_word"
    assert "alt_text" not in trust_fields("a dog on grass", -0.5, "", AltTextConfig(fallback="Photo"), True)


def test_confidence_is_the_mean_token_log_probability():
    from mmfm.generate import caption_images
    from mmfm.models.factory import build_model
    from PIL import Image

    torch.manual_seed(0)
    model = build_model({"name": "tiny_captioner"}).eval()
    image = torch.randn(1, 3, 32, 32)
    new = model.generate_ids(image, [[]], max_new_tokens=5, min_new_tokens=5)
    conf = caption_confidence(model, image, [], new)[0]
    ids = [model.layout.bos] + new[0].tolist()
    logits = model(image=image, text_ids=torch.tensor([ids]))["logits"][0].log_softmax(-1)
    cut = ids.index(model.layout.eos, 1) if model.layout.eos in ids[1:] else len(ids) - 1
    hand = [logits[t, ids[t + 1]].item() for t in range(cut)]
    assert conf == pytest.approx(sum(hand) / len(hand), abs=1e-5)
    rows = caption_images(model, [Image.new("RGB", (40, 40), "red")], GenerateConfig(max_new_tokens=5))
    assert isinstance(rows[0]["confidence"], float) and rows[0]["confidence"] <= 0
    assert "degenerate" in rows[0]


def test_service_page_shows_stored_decoding_settings():
    from mmfm.serve.page import render_page

    page = render_page(GenerateConfig(num_beams=3, max_new_tokens=16))
    assert 'id="num_beams" type="number" min="1" max="8" value="3"' in page
    assert 'id="max_new_tokens" type="number" min="1" max="128" value="16"' in page
