"""mmfm's pure-Python caption metrics against goldens computed by pycocoevalcap (Java PTB tokenizer,
Bleu/Rouge/Cider); regenerate with tests/fixtures/metrics/make_goldens.py."""
import json

import pytest

from mmfm.eval.captioning.caption_metrics import COCO_NAMES, bleu, cider_d, rouge_l, score_captions
from mmfm.eval.captioning.ptb_tokenize import ptb_tokenize, tokenize_corpus

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


@pytest.fixture(scope="module")
def sentences(repo_root):
    path = repo_root / "tests" / "fixtures" / "metrics" / "caption_sentences_goldens.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_ptb_tokenizer_matches_java_on_caption_sentences(sentences):
    """A few hundred COCO-style captions tokenized as pycocoevalcap does: references in one stream,
    candidates in another (a caption's last token can depend on the next caption)."""
    refs, preds = sentences["references"], sentences["predictions"]
    assert sum(map(len, refs.values())) + len(preds) > 400
    got_refs = tokenize_corpus(refs)
    bad = [(s, want, got) for k in refs for s, want, got in
           zip(refs[k], sentences["ptb"]["references"][k], got_refs[k]) if got != want]
    assert not bad, (len(bad), bad[:5])
    got_preds = tokenize_corpus({k: [{"caption": p}] for k, p in preds.items()})
    assert {k: v[0] for k, v in got_preds.items()} == sentences["ptb"]["predictions"]


def test_sentence_final_single_letter_depends_on_next_caption():
    """The jar ends a sentence at "x." before a capitalised opener (``A``, ``The``, ``It`` ...), also across
    the line break to the next caption; before anything else the letter keeps its period."""
    got = tokenize_corpus({"a": ["The letter a.", "A sign with the letter B.", "the letter c."], "b": ["the end"]})
    assert got == {"a": ["the letter a", "a sign with the letter b.", "the letter c."], "b": ["the end"]}
    assert ptb_tokenize("Plan B. It works.") == "plan b it works"
    assert ptb_tokenize("The letter a.") == "the letter a."


def test_cider_d_equals_pycocoevalcap_on_caption_sentences(sentences):
    ours = score_captions(sentences["predictions"], sentences["references"], per_image=True)
    _check(ours, sentences["tokenized"], sentences["keys"])


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
