"""The VQAv2 accuracy port, checked on hand-computed cases, one per normalisation quirk of the official
vqaEval.py (GT-Vision-Lab/VQA master). Expected values are derived by hand in the comments."""
import pytest

from mmfm.eval.captioning.vqa_metrics import (answer_weights, evaluate_vqa, normalize_answer, process_punctuation,
                                   vqa_accuracy)


def test_all_agree_and_period_stripped():
    # "Yes." -> period not followed by a digit is deleted -> "yes"; each leave-one-out has 9 matches -> 1
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0


def test_leave_one_out_min_over_three():
    # 3 x "2", 7 x "3"; "two" -> "2". Leaving out a "2": 2 matches -> 2/3; leaving out a "3": 3 -> 1.
    # (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    # 1 x "dog", 9 x "cat"; "the dog" -> "dog". Leaving out "dog": 0; leaving out a cat: 1/3 -> 9/30 = 0.3
    assert vqa_accuracy("the dog", ["dog"] + ["cat"] * 9) == pytest.approx(0.3)
    # exact duplicates are removed one at a time, not all at once: 4 x "dog" -> leaving one out leaves 3 -> 1
    assert vqa_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0


def test_contractions_restored_in_prediction_only():
    # "dont know" -> "don't know"; 2 x "don't know", 8 x "no": (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("dont know", ["don't know"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    # the official table has capitalised keys ("Im", "Ive") that lower() makes unreachable: kept as is
    assert normalize_answer("Im sure") == "im sure"
    assert normalize_answer("isnt it") == "isn't it"


def test_number_words_and_articles():
    assert normalize_answer("None") == "0"
    assert normalize_answer("ten") == "10" and normalize_answer("eleven") == "eleven"
    assert normalize_answer("An apple") == "apple"
    assert normalize_answer("the") == ""
    assert vqa_accuracy("none", ["0"] * 10) == 1.0


def test_gt_processed_only_when_answers_disagree():
    # GT disagree -> punctuation processed -> "black-and-white" becomes "black and white": all 10 match
    assert vqa_accuracy("black-and-white", ["black and white"] * 3 + ["black-and-white"] * 7) == 1.0
    # GT all identical -> left as is, the processed prediction "black and white" never matches
    assert vqa_accuracy("black-and-white", ["black-and-white"] * 10) == 0.0
    # GT is never lower-cased
    assert vqa_accuracy("Yes", ["Yes"] * 10) == 0.0


def test_punctuation_rules():
    assert process_punctuation("1,000") == "1000"                   # digit,digit -> punctuation deleted
    assert process_punctuation("red, white") == "red white"         # ", " touches a space -> deleted
    assert process_punctuation("red,white") == "red white"          # else replaced by a space
    assert normalize_answer("a,b") == "b"                           # "a b" -> article "a" dropped
    assert process_punctuation("3.5") == "3.5" and process_punctuation("5.") == "5"
    assert process_punctuation("e.g.") == "eg"
    assert process_punctuation("time: 3") == "time: 3"              # ':' and "'" are not in the list
    assert process_punctuation("what?!") == "what  "                # '?' and '!' replaced by spaces
    assert normalize_answer("  yes\n") == "yes"


def test_period_strip_stops_after_32():
    # the official code passes re.UNICODE (32) as re.sub's count: only 32 periods go
    assert process_punctuation("." * 40 + "x") == "." * 8 + "x"
    assert vqa_accuracy("." * 40 + "x", ["." * 8 + "x"] * 10) == 1.0


def test_breakdown_by_answer_and_question_type():
    ann = {
        "q1": {"answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        "q2": {"answers": ["no"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        "q3": {"answers": ["2"] * 3 + ["3"] * 7, "answer_type": "number", "question_type": "how many"},
        "q4": {"answers": ["dog"] + ["cat"] * 9, "answer_type": "other", "question_type": "what is"},
    }
    pred = {"q1": "yes", "q2": "yes", "q3": "two", "q4": "dog"}
    out = evaluate_vqa(pred, ann)
    # per question: 1, 0, 0.9, 0.3 -> overall 100 * 2.2 / 4 = 55
    assert out["overall"] == pytest.approx(55.0)
    assert out["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 90.0, "other": 30.0})
    assert out["per_question_type"]["is the"] == pytest.approx(50.0)
    assert out["overall_rounded"] == 55.0 and out["counts"]["questions"] == 4
    with pytest.raises(ValueError, match="without a prediction"):
        evaluate_vqa({"q1": "yes"}, ann)


def test_answer_weights_are_official_accuracies():
    w = answer_weights(["2"] * 3 + ["3"] * 7)
    assert w == pytest.approx({"2": 0.9, "3": 1.0})
    w = answer_weights(["dog"] + ["cat"] * 9)
    assert w == pytest.approx({"dog": 0.3, "cat": 1.0})
