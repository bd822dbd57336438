"""mmfm's pure-Python caption metrics against goldens computed by pycocoevalcap (Java PTB tokenizer,
Bleu/Rouge/Cider); regenerate with tests/fixtures/metrics/make_goldens.py."""
import json

import pytest

from mmfm.eval.caption_metrics import COCO_NAMES, bleu, cider_d, rouge_l, score_captions
from mmfm.eval.ptb_tokenize import ptb_tokenize

TOL = 1e-12


@pytest.fixture(scope="module")
def data(repo_root):
    d = repo_root / "tests" / "fixtures" / "metrics"
    return (json.loads((d / "caption_fixture.json").read_text(encoding="utf-8")),
            json.loads((d / "caption_goldens.json").read_text(encoding="utf-8")),
            json.loads((d / "ptb_goldens.json").read_text(encoding="utf-8")))


def _check(ours: dict, gold: dict, keys: list[str]):
    for name, coco in COCO_NAMES.items():
        assert ours[name] == pytest.approx(gold["corpus"][coco], rel=TOL, abs=TOL), name
    for name, coco in (("BLEU-4", "Bleu_4"), ("ROUGE-L", "ROUGE_L"), ("CIDEr-D", "CIDEr")):
        got = [ours["per_image"][k][name] for k in keys]
        assert got == pytest.approx(gold["per_image"][coco], rel=TOL, abs=TOL), name


def test_ptb_tokenizer_matches_java_on_battery(data):
    cases = data[2]["cases"]
    bad = [(s, want, ptb_tokenize(s)) for s, want in cases if ptb_tokenize(s) != want]
    assert not bad, bad[:5]
    assert len(cases) > 300


def test_ptb_tokenizer_matches_java_on_fixture(data):
    fx, gold, _ = data
    for k, refs in fx["references"].items():
        assert [ptb_tokenize(r) for r in refs] == gold["ptb"]["references"][k]
        assert ptb_tokenize(fx["predictions"][k]) == gold["ptb"]["predictions"][k]


def test_scores_equal_pycocoevalcap_with_tokenization(data):
    fx, gold, _ = data
    ours = score_captions(fx["predictions"], fx["references"], per_image=True)
    _check(ours, gold["tokenized"], gold["keys"])


def test_scorers_equal_pycocoevalcap_on_raw_text(data):
    fx, gold, _ = data
    ours = score_captions(fx["predictions"], fx["references"], tokenize=False, per_image=True)
    _check(ours, gold["raw"], gold["keys"])


def test_perfect_and_degenerate_cases():
    refs = {"a": ["a dog runs on the grass"], "b": ["two cats sleep on a sofa"]}
    perfect = score_captions({"a": "A dog runs on the grass.", "b": "two cats sleep on a sofa"}, refs)
    assert perfect["BLEU-4"] == pytest.approx(1.0) and perfect["ROUGE-L"] == pytest.approx(1.0)
    empty = score_captions({"a": "", "b": ""}, refs)
    assert empty["BLEU-1"] < 1e-6 and empty["ROUGE-L"] == 0.0 and empty["CIDEr-D"] == 0.0
    assert rouge_l("", ["a b"]) == 0.0
    assert cider_d(["x y"], [["x y"]]) == [0.0]       # one image: every idf is log(1) = 0
    corpus, _ = bleu(["a b c d"], [["a b c d e f", "a b c"]])
    assert corpus[0] == pytest.approx(1.0)            # all unigrams match; closest ref length is 3 < 4


def test_key_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same keys"):
        score_captions({"a": "x"}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="no reference"):
        score_captions({"a": "x"}, {"a": []})
