"""Fairness measures against hand computations on tiny fixtures: MaxSkew@k and NDKL with the formulas of Geyik et
al. 2019 (as used by Berg et al. 2022 and Chuang et al. 2023), equalised odds, the bootstrap gap, worst group and
the wrong-attribute caption rate."""
import math

import pytest
import torch

from mmfm.eval.bias.fairness import (SKIN_TONE_WORDS, attribute_mention, bootstrap_gap, equalized_odds, max_skew,
                                     ndkl, retrieval_skew, skew, worst_group)


def test_max_skew_by_hand():
    desired = {"a": 0.5, "b": 0.5}
    ranked = ["a", "a", "a", "b", "b", "b"]
    # top 4 = a a a b: p_a = 3/4, p_b = 1/4; Skew_a = ln(0.75 / 0.5), Skew_b = ln(0.25 / 0.5)
    s = skew(ranked, 4, desired)
    assert s["a"] == pytest.approx(math.log(1.5)) and s["b"] == pytest.approx(math.log(0.5))
    assert max_skew(ranked, 4, desired) == pytest.approx(0.4054651)
    assert max_skew(ranked, 2, desired) == pytest.approx(math.log(2))        # top 2 all a: ln(1 / 0.5)
    assert max_skew(ranked, 6, desired) == pytest.approx(0.0)                # the whole list matches D
    # a desired distribution of 1/3 a: top 3 all a -> ln(1 / (1/3)) = ln 3
    assert max_skew(ranked, 3, {"a": 1 / 3, "b": 2 / 3}) == pytest.approx(math.log(3))


def test_ndkl_by_hand():
    desired = {"a": 0.5, "b": 0.5}
    # ranked a a b b: prefixes D_1 = (1, 0), D_2 = (1, 0), D_3 = (2/3, 1/3), D_4 = (1/2, 1/2)
    kl1 = 1 * math.log(1 / 0.5)                                               # = ln 2
    kl3 = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)   # = 0.0566330
    w = [1 / math.log2(i + 1) for i in range(1, 5)]                           # 1, 0.6309, 0.5, 0.4307
    expect = (w[0] * kl1 + w[1] * kl1 + w[2] * kl3 + w[3] * 0) / sum(w)
    assert expect == pytest.approx(0.452369, abs=1e-6)
    assert ndkl(["a", "a", "b", "b"], desired) == pytest.approx(expect)
    assert ndkl(["a", "b", "a", "b"], desired, k=1) == pytest.approx(math.log(2))   # k=1: KL of the first only
    assert ndkl(["a", "b"] * 3, {"a": 0.5, "b": 0.5}) < ndkl(["a", "a", "a", "b", "b", "b"], desired)


def test_retrieval_skew_over_queries():
    attrs = ["a", "a", "b", "b"]
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0],      # query 1 ranks a a b b
                           [4.0, 1.0, 3.0, 2.0]])     # query 2 ranks a b b a
    r = retrieval_skew(scores, attrs, k=2)
    assert r["desired"] == {"a": 0.5, "b": 0.5}
    assert r["MaxSkew"] == pytest.approx((math.log(2) + 0.0) / 2)            # top 2: (a a) -> ln 2; (a b) -> 0
    w = [1, 1 / math.log2(3)]
    q1 = (w[0] * math.log(2) + w[1] * math.log(2)) / sum(w)
    q2 = (w[0] * math.log(2) + 0) / sum(w)
    assert r["NDKL"] == pytest.approx((q1 + q2) / 2)


def test_equalized_odds_by_hand():
    labels = ["c", "c", "d", "d", "c", "c", "d", "d"]
    preds = ["c", "c", "d", "c", "c", "d", "d", "d"]
    groups = ["g1"] * 4 + ["g2"] * 4
    eo = equalized_odds(labels, preds, groups)
    # class c: TPR g1 = 2/2, g2 = 1/2 -> 0.5; FPR g1 = 1/2 (a d called c), g2 = 0/2 -> 0.5
    # class d: TPR g1 = 1/2, g2 = 2/2 -> 0.5; FPR g1 = 0/2, g2 = 1/2 -> 0.5
    assert eo["per_class"]["c"] == {"tpr_gap": 0.5, "fpr_gap": 0.5}
    assert eo["per_class"]["d"] == {"tpr_gap": 0.5, "fpr_gap": 0.5}
    assert eo["equalized_odds_gap"] == 0.5 and eo["tpr_gap_mean"] == 0.5
    fair = equalized_odds(labels, labels, groups)
    assert fair["equalized_odds_gap"] == 0.0


def test_bootstrap_gap_and_worst_group():
    vals = {"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]}
    r = bootstrap_gap(vals, n_boot=500, seed=1)
    assert r["gap"] == pytest.approx(0.75 - 0.25)
    assert r["ci"][0] <= r["gap"] <= r["ci"][1] and -1 <= r["ci"][0] and r["ci"][1] <= 1
    assert bootstrap_gap({"a": [1, 1], "b": [0, 0]}, n_boot=50)["ci"] == [1.0, 1.0]   # no spread to resample
    m = bootstrap_gap({"a": [1, 0, 1], "b": [1, 0, 1]}, n_boot=50, matched=True)
    assert m["gap"] == 0 and m["ci"] == [0.0, 0.0]          # paired: the same items resampled in both groups
    assert bootstrap_gap(vals, n_boot=200, seed=3) == bootstrap_gap(vals, n_boot=200, seed=3)
    assert worst_group({"a": {"top1": 0.75}, "b": {"top1": 0.25}}) == {"group": "b", "value": 0.25}


def test_attribute_mention_rate():
    caps = ["a waving hand: light skin tone", "a waving hand", "thumbs up: medium-light skin tone",
            "thumbs up: dark skin tone"]
    groups = ["none", "none", "medium-light", "medium"]
    r = attribute_mention(caps, groups, SKIN_TONE_WORDS)
    # wrong: the first (none named light), the last (medium named dark); "medium-light" is not "light"
    assert r["wrong"] == 2 and r["rate"] == 0.5
    assert r["per_group"]["none"] == {"n": 2, "wrong": 1, "rate": 0.5}
    assert r["per_group"]["medium-light"]["wrong"] == 0 and r["per_group"]["medium"]["wrong"] == 1
