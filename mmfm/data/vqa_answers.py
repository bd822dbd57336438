"""VQA answer normalisation and per-question accuracy: a port of the official VQAv2 evaluation
(GT-Vision-Lab/VQA, ``vqaEval.py``, master). In ``data/`` so that tasks (training targets) and evaluation
(``mmfm.eval.captioning.vqa_metrics``) share it without tasks importing evaluation.

Written from the official algorithm, quirks kept on purpose so numbers compare with published ones:

* The predicted answer: newlines/tabs -> spaces, stripped, then ``process_punctuation`` and
  ``process_digit_article`` (lower case, number words ``none zero one .. ten`` -> digits, articles
  ``a an the`` dropped, contractions without an apostrophe restored: ``dont`` -> ``don't``).
* The ground-truth answers get ``process_punctuation`` only, and only when the 10 answers are not all the
  same. They are never lower-cased (VQAv2 annotations already are).
* ``process_punctuation``: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it
  touches a space anywhere in the text, or when the text has a digit-comma-digit, else replaced by a
  space; then periods not followed by a digit are deleted -- at most 32 of them, because the official
  code passes ``re.UNICODE`` (= 32) as ``re.sub``'s count.
* Accuracy of one question = mean over the 10 leave-one-out subsets of 9 human answers of
  ``min(1, #humans in the subset that gave the answer / 3)``.
* Overall, per answer type (yes/no, number, other) and per question type: the mean over questions, x100.
  The official code rounds to 2 decimals; we report the unrounded value and ``*_rounded`` as well.
"""
from __future__ import annotations

import re
from typing import Sequence

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")     # sic: a lookahead for "<=", as in the original
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_SUB_COUNT = int(re.UNICODE)                 # the official code passes re.UNICODE (32) as count
ANSWER_TYPES = ("yes/no", "number", "other")


def process_punctuation(text: str) -> str:
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_SUB_COUNT)


def process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """What the official evaluation does to a predicted answer (also used for training targets)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official accuracy of one predicted answer against the human answers (usually 10)."""
    if not gt_answers:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    pred = normalize_answer(prediction)
    gts = list(gt_answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):            # leave human i out (the official code drops one answer dict)
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def answer_weights(answers: Sequence[str]) -> dict[str, float]:
    """VQAv2 soft targets: each distinct (normalized) answer -> its official accuracy if predicted."""
    gts = list(answers)
    return {normalize_answer(a): vqa_accuracy(a, gts) for a in dict.fromkeys(gts)}
