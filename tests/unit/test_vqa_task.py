"""VQATask on a tiny real captioner: answer lists weighted by agreement, prompt masking, question
truncation warnings, rank mode, and an overfit-one-batch run that must generate the answers exactly."""
import logging
import pickle

import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError, load_experiment
from mmfm.data.collate import collate_dicts
from mmfm.tasks import build_task
from tests.helpers import word_tokenizer
from mmfm.tasks.vqa import target_answers

QUESTIONS = ["what color is it", "how many birds", "is it a dog"]
ANSWERS = [["red"] * 8 + ["orange"] * 2, ["2"] * 6 + ["two"] * 2 + ["3"] * 2, ["no"] * 10]
WORDS = ["question", "answer", ":", "what", "color", "is", "it", "how", "many", "birds", "a", "dog", "red",
         "orange", "2", "3", "no", "yes", "blue"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    tok = word_tokenizer(tmp_path_factory.mktemp("vqatok"), WORDS)
    return load_experiment(data={
        "task": {"name": "vqa", "vqa": {"max_answers": 3, "max_question_tokens": 6}},
        "model": {"name": "tiny_captioner", "decoder": {"tokenizer": tok, "max_length": 16}},
        "data": {"train_augment": False}})


def _samples():
    colors = [(255, 0, 0), (0, 0, 255), (0, 200, 0)]
    return [{"image": Image.new("RGB", (40, 40), c), "__key__": f"q{i}",
             "json": {"question": q, "answers": a, "answer_type": "other"}, "txt": q}
            for i, (c, q, a) in enumerate(zip(colors, QUESTIONS, ANSWERS))]


def test_answer_list_weights():
    # official VQA accuracy of each distinct answer; "two" normalises to "2" and counts with it
    got = dict(target_answers(ANSWERS[1], "vqa", 10))
    assert got["2"] == pytest.approx(1.0) and got["3"] == pytest.approx(0.6)
    got = dict(target_answers(ANSWERS[0], "frequency", 10))
    assert got == pytest.approx({"red": 0.8, "orange": 0.2})
    assert [a for a, _ in target_answers(ANSWERS[0], "vqa", 1)] == ["red"]


def test_processor_slots_and_masks(cfg):
    task = build_task(cfg)
    proc = pickle.loads(pickle.dumps(task.processor(train=False)))
    out = proc(_samples()[1])
    assert out["text_ids"].shape == (3, 16) and out["answer_weights"].tolist() == pytest.approx([1.0, 0.6, 0.0])
    layout = task.model.layout
    prompt_len = 1 + len(layout.encode_plain("question: how many birds answer:"))
    row = out["labels"][0]
    assert (row[:prompt_len] == -100).all()
    assert row[prompt_len].item() == layout.encode_plain("2")[0] and row[prompt_len + 1].item() == layout.eos
    assert (out["labels"][2] == -100).all() and out["attention_mask"][2].sum() == 0
    with pytest.raises(KeyError, match="no answers"):
        proc({"image": Image.new("RGB", (8, 8)), "__key__": "z", "json": {"question": "what"}})


def test_long_and_empty_questions_truncated_with_warning(cfg, caplog):
    task = build_task(cfg)
    proc = task.processor(train=False)
    s = _samples()[0]
    with caplog.at_level(logging.WARNING, logger="mmfm.vqa"):
        long = proc({**s, "json": {**s["json"], "question": "what color is it " * 5}})
        empty = proc({**s, "json": {**s["json"], "question": ""}, "txt": ""})
    assert "truncated to 6" in caplog.text and "empty question" in caplog.text
    n_long = int(long["attention_mask"][0].sum())
    assert n_long == 1 + len(task.model.encode_plain("question: what color is it what color answer: red")) + 1
    assert int(empty["attention_mask"][0].sum()) == 1 + 4 + 1 + 1     # bos, "question : answer :", red, eos


def test_template_must_hold_the_question(cfg):
    import dataclasses
    bad = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, vqa=dataclasses.replace(
        cfg.task.vqa, template="answer:")))
    with pytest.raises(ConfigError, match="question"):
        build_task(bad)


def test_overfit_one_batch_generates_and_ranks_answers(cfg):
    from mmfm.generate import answer_questions, rank_answers

    torch.manual_seed(0)
    task = build_task(cfg)
    proc = task.processor(train=False)
    batch = collate_dicts([proc(s) for s in _samples()])
    opt = torch.optim.AdamW(task.parameters(), lr=1e-2, weight_decay=0.0)
    want = ["red", "2", "no"]
    for step in range(1, 301):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            got = answer_questions(task.model.eval(), batch["image"], QUESTIONS)
            task.train()
            if got == want:
                break
    assert got == want, (step, got)
    # weighted targets: the majority answer must beat the minority one, which beats an unseen one
    ranked = rank_answers(task.model.eval(), batch["image"], QUESTIONS, ["red", "orange", "blue"])
    assert [r["answer"] for r in ranked[0]] == ["red", "orange", "blue"]
    assert ranked[1][0]["answer"] in ("red", "orange", "blue") and ranked[0][0]["logprob"] > ranked[0][2]["logprob"]
