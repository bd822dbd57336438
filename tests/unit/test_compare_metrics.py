"""The metrics behind ``mmfm eval compare``: SQuAD token F1 against the official v1.1 script's logic, macro-F1
against scikit-learn, BLEU recomputed from per-sentence counts, the paired bootstrap, and the linear / few-shot
probe protocol."""
import re
import string
from collections import Counter

import numpy as np
import pytest

from mmfm.config import ConfigError
from mmfm.eval.compare.bootstrap import SampleMetric, paired_delta
from mmfm.eval.captioning.caption_metrics import bleu, bleu_from_stats, bleu_stats
from mmfm.eval.zeroshot.probe import fewshot_indices, linear_probe
from mmfm.eval.captioning.vqa_metrics import max_token_f1, squad_normalize, token_f1
from mmfm.eval.zeroshot.metrics import classification_metrics, macro_f1


# ------------------------------------------------------------ SQuAD v1.1 evaluate-v1.1.py, its logic as a golden
def _ref_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _ref_f1(prediction, ground_truth):
    p, g = _ref_normalize(prediction).split(), _ref_normalize(ground_truth).split()
    common = Counter(p) & Counter(g)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(p), 1.0 * num_same / len(g)
    return (2 * precision * recall) / (precision + recall)


FIXTURES = [   # (prediction, references, hand-derived F1)
    ("Denver Broncos", ["Denver Broncos", "The Denver Broncos"], 1.0),
    # "the broncos of denver" -> [broncos, of, denver] vs [denver, broncos]: 2 common, P 2/3, R 1 -> 0.8
    ("the Broncos of Denver", ["Denver Broncos"], 0.8),
    # "two red apples" vs "2 apples": 1 common (apples), P 1/3, R 1/2 -> 0.4; vs "two": P 1/3, R 1 -> 0.5
    ("two red apples", ["2 apples", "two"], 0.5),
    # punctuation and articles vanish: "a dog's bone." -> [dogs, bone]; "An old dogs bone" -> [old, dogs, bone]
    ("a dog's bone.", ["An old dogs bone"], 0.8),
    ("yes", ["no", "No."], 0.0),
    ("cat cat dog", ["cat dog dog"], 2 / 3),        # multiplicity: common = {cat: 1, dog: 1}
    ("the", ["a"], 0.0),                            # both normalise to nothing
]


@pytest.mark.parametrize("pred,refs,expected", FIXTURES)
def test_token_f1_equals_the_squad_script(pred, refs, expected):
    assert max_token_f1(pred, refs) == pytest.approx(expected, abs=1e-12)
    assert max_token_f1(pred, refs) == pytest.approx(max(_ref_f1(pred, r) for r in refs), abs=1e-12)
    assert squad_normalize(pred) == _ref_normalize(pred)


def test_token_f1_needs_a_reference():
    assert token_f1("", "a cat") == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        max_token_f1("cat", [])


def test_macro_f1_equals_scikit_learn():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    for c in (2, 3, 7):
        y, p = rng.integers(0, c, 50), rng.integers(0, c, 50)
        p[p == c - 1] = 0                                   # a class that is never predicted
        cm = np.zeros((c, c), np.int64)
        np.add.at(cm, (y, p), 1)
        assert macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
        logits = np.eye(c)[p]
        assert classification_metrics(logits, y, c)["macro_f1"] == pytest.approx(macro_f1(cm))


def test_bleu_from_counts_equals_corpus_bleu_on_any_subset():
    hyps = ["a red circle", "a blue square on red", "green", "two red squares and a circle"]
    refs = [["a red circle on a gradient"], ["a blue square"], ["a green triangle", "green shape"],
            ["two squares", "red squares and a circle"]]
    stats = bleu_stats(hyps, refs)
    assert bleu_from_stats(stats) == pytest.approx(bleu(hyps, refs)[0], abs=1e-15)
    pick = [3, 1, 1]
    assert bleu_from_stats(np.asarray(stats)[pick]) == pytest.approx(
        bleu([hyps[i] for i in pick], [refs[i] for i in pick])[0], abs=1e-15)


def _acc(correct, keys=None):
    keys = keys or list(range(len(correct)))
    return SampleMetric(keys, {"value": np.asarray(correct, float)}, "mean")


def test_paired_bootstrap():
    same = _acc([1, 0, 1, 1, 0, 1])
    d = paired_delta(same, _acc([1, 0, 1, 1, 0, 1]))
    assert d["delta"] == 0 and d["ci95"] == [0.0, 0.0] and d["improved"] is None
    # paired: the other model is right exactly where the base is, plus two more -> every draw's delta >= 0
    base, other = _acc([1, 0, 1, 0, 1, 0, 1, 0] * 4), _acc([1, 1, 1, 1, 1, 0, 1, 0] * 4)
    d = paired_delta(base, other, n_boot=500, seed=3)
    assert d["delta"] == pytest.approx(0.25) and d["ci95"][0] > 0 and d["improved"] is True
    assert d == paired_delta(base, other, n_boot=500, seed=3)             # fixed seed, same interval
    assert paired_delta(other, base, n_boot=500, seed=3)["improved"] is False
    # samples are paired by key, not by position
    shuffled = _acc([1, 1, 1, 1, 1, 0, 1, 0] * 4, keys=list(range(32)))
    order = np.random.default_rng(0).permutation(32)
    shuffled = SampleMetric([int(i) for i in order], {"value": shuffled.arrays["value"][order]}, "mean")
    assert paired_delta(base, shuffled, n_boot=500, seed=3) == d
    # perplexity: lower is better
    a = SampleMetric(list(range(20)), {"num": np.full(20, 2.0), "den": np.full(20, 4)}, "perplexity", False)
    b = SampleMetric(list(range(20)), {"num": np.full(20, 1.0), "den": np.full(20, 4)}, "perplexity", False)
    d = paired_delta(a, b)
    assert d["delta"] == pytest.approx(np.exp(0.25) - np.exp(0.5)) and d["improved"] is True


def test_a_difference_inside_the_printed_rounding_is_no_clear_change():
    # the reported case: an interval printed [+0.0000, +0.0461] whose true lower bound is ~1e-9 was "better"
    base = _acc([0.0] * 42)
    other = _acc([1e-9] * 40 + [0.05, 0.05])
    d = paired_delta(base, other, n_boot=1000, seed=0)
    assert 0 < d["ci95"][0] < 5e-5 and f"{d['ci95'][0]:+.4f}" == "+0.0000" and d["ci95"][1] > 5e-5
    assert d["improved"] is None
    assert paired_delta(other, base, n_boot=1000, seed=0)["improved"] is None       # nor "worse" the other way
    # an interval clear of zero by more than the rounding still is better
    d = paired_delta(base, _acc([1e-4] * 42), n_boot=200)
    assert d["ci95"][0] == pytest.approx(1e-4) and d["improved"] is True


def test_compare_chart_gives_every_metric_its_own_axis():
    from mmfm.eval.compare.report import chart_figure
    rows = []
    for metric, values in (("BLEU-4", (0.04, 0.05)), ("perplexity", (2952.0, 2100.0)), ("CIDEr-D", (0.3, 0.4))):
        for model, v in zip(("a", "b"), values):
            ref = model == "a"
            rows.append({"data": "coco", "metric": metric, "model": model, "value": v, "delta": None if ref else
                         v - values[0], "ci95": None if ref else [v - values[0] - 0.01, v - values[0] + 0.01]})
    fig = chart_figure({"models": ["a", "b"], "rows": rows})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["coco: BLEU-4", "coco: perplexity", "coco: CIDEr-D"]
    assert axes[0].get_ylim()[1] < 1 and axes[1].get_ylim()[1] > 2952 and axes[2].get_ylim()[1] < 1


def test_fewshot_indices_take_k_per_class_and_name_a_short_class():
    y = np.asarray([0, 0, 0, 1, 1, 2, 2, 2, 2])
    rows = fewshot_indices(y, 2, seed=0)
    assert sorted(Counter(y[rows].tolist()).values()) == [2, 2, 2]
    assert list(rows) == list(fewshot_indices(y, 2, seed=0)) and len(fewshot_indices(y, None)) == 9
    with pytest.raises(ConfigError, match="3-shot probe: class 'b' has only 2"):
        fewshot_indices(y, 3, classnames=["a", "b", "c"])


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    y = np.repeat(np.arange(4), 20)
    x = centres[y] + rng.normal(size=(80, 16)) * 0.3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tr, te = np.arange(80) % 2 == 0, np.arange(80) % 2 == 1
    full = linear_probe(x[tr], y[tr], x[te], y[te], 4)
    assert full["top1"] == 1.0 and full["train_rows"] == 40 and full["top5"] is None
    one = linear_probe(x[tr], y[tr], x[te], y[te], 4, k=1, seed=1)
    assert one["train_rows"] == 4 and one["pred"].shape == (40,)
    assert np.array_equal(one["pred"], linear_probe(x[tr], y[tr], x[te], y[te], 4, k=1, seed=1)["pred"])
