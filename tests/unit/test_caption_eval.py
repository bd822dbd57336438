"""Eval runners: degenerate-output detection, JSONL data reading, provenance in the result JSON, bad images."""
import json

import pytest
import torch
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.captioning.caption import degenerate_report, evaluate_captions
from mmfm.eval.captioning.data import read_vqa_data
from mmfm.eval.captioning.runner import TooManySkipped
from mmfm.eval.captioning.vqa import evaluate_vqa_model
from mmfm.eval.result import write_eval

pytestmark = pytest.mark.usefixtures("one_thread")


def test_degenerate_report_flags_loops_empties_and_collapse():
    caps = {"a": "a dog on the grass", "b": "", "c": "a man a man a man riding", "d": "the the the the",
            "e": "a dog on the grass", "f": "a cat sits on a red mat near a red mat near a red mat"}
    r = degenerate_report(caps)
    assert r["empty"] == 1 and r["examples"]["empty"] == ["b"]
    assert r["repetition_loops"] == 3 and {k for k, _ in r["examples"]["repetition_loops"]} == {"c", "d", "f"}
    assert r["distinct_captions"] == 5 and not r["collapsed"] and not r["one_caption_for_every_image"]
    same = degenerate_report({str(i): "a photo of a thing" for i in range(6)})
    assert same["one_caption_for_every_image"] and same["collapsed"] and same["most_common"]["frac"] == 1.0
    ok = degenerate_report({"x": "two dogs play with a ball", "y": "a red bus on a street"})
    assert ok["repetition_loops"] == 0 and ok["empty"] == 0


@pytest.fixture(scope="module")
def model():
    from mmfm.models.factory import build_model
    torch.manual_seed(0)
    m = build_model({"name": "tiny_captioner"}).eval()
    m.checkpoint_path = "in-memory"
    return m


def test_caption_eval_records_provenance_and_bad_images(model, tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    rows = [{"image": "a.png", "captions": ["a red box", "red"]}, {"image": "b.png", "captions": ["a blue box"]},
            {"image": "bad.png", "captions": ["broken"]}]
    data = tmp_path / "val.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    from mmfm.config.caption import GenerateConfig
    res = evaluate_captions(model, str(data), GenerateConfig(max_new_tokens=4, min_new_tokens=4), progress=False,
                            max_skipped=0.5)
    meta = res.meta
    assert meta["samples"] == 2 and meta["failed"] == 1 and meta["failures"][0]["image"].endswith("bad.png")
    assert meta["skipped"] == {"count": 1, "of": 3, "frac": pytest.approx(1 / 3), "max_frac": 0.5}
    assert meta["split"] == "val" and meta["decoding"]["max_new_tokens"] == 4 and "pycocoevalcap" in meta["backend"]
    assert set(res.metrics) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}
    assert res.predictions[0]["references"] == ["a red box", "red"]
    paths = write_eval(res, tmp_path / "out")
    summary = json.loads(paths["metrics"].read_text())
    assert "predictions" not in summary and summary["checkpoint"] == "in-memory"
    assert len(paths["predictions"].read_text().splitlines()) == 2


def test_vqa_data_and_rank_eval(model, tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "what color?", "answers": [{"answer": "red"}] * 10,
             "answer_type": "other", "question_id": 7},
            {"image": "a.png", "question": "is it red?", "answers": ["yes"] * 9 + ["no"], "answer_type": "yes/no",
             "question_id": 8}]
    data = tmp_path / "vqa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    items = read_vqa_data(str(data))
    assert [i["key"] for i in items] == ["7", "8"] and items[0]["answers"] == ["red"] * 10
    res = evaluate_vqa_model(model, str(data), mode="rank", candidates=["red", "yes", "no"], progress=False)
    assert res.meta["samples"] == 2 and res.meta["mode"] == "rank" and res.meta["candidates"] == 3
    assert set(res.metrics["per_answer_type"]) == {"other", "yes/no"}
    assert all(p["answer"] in ("red", "yes", "no") for p in res.predictions)
    with pytest.raises(ConfigError, match="answer list"):
        evaluate_vqa_model(model, str(data), mode="rank", progress=False)
    data.write_text(json.dumps({**rows[0], "answers": []}))
    with pytest.raises(ConfigError, match="no answers"):
        read_vqa_data(str(data))


def _shards_with_one_corrupt_image(root):
    """A real tar shard: 4 samples with json captions, the third one's png is not an image."""
    import io

    from mmfm.data.shards import write_shards

    def png(color):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), color).save(buf, format="PNG")
        return buf.getvalue()

    colors = [(200, 10, 10), (10, 200, 10), None, (10, 10, 200)]
    write_shards(({"__key__": f"s{i}", "png": png(c) if c else b"\x89PNG truncated",
                   "json": json.dumps({"captions": [f"a box number {i}"]}).encode()} for i, c in enumerate(colors)),
                 root, shard_size=10)
    return str(root)


def test_caption_eval_counts_skipped_images_and_fails_above_max_skipped(model, tmp_path):
    from mmfm.config.caption import GenerateConfig
    data, gen = _shards_with_one_corrupt_image(tmp_path / "shards"), GenerateConfig(max_new_tokens=3)
    with pytest.raises(TooManySkipped, match=r"1 of 4 images \(25\.0%\) failed to decode.*allowed 1\.0%") as e:
        evaluate_captions(model, data, gen, progress=False)                 # default: at most 1%
    partial = e.value.result.meta
    assert partial["samples"] == 3 and partial["failures"][0]["image"].endswith(":s2")
    res = evaluate_captions(model, data, gen, progress=False, max_skipped=0.25)
    assert res.meta["samples"] == 3
    assert res.meta["skipped"] == {"count": 1, "of": 4, "frac": 0.25, "max_frac": 0.25}
    with pytest.raises(ConfigError, match="max_skipped"):
        evaluate_captions(model, data, gen, progress=False, max_skipped=2)


def test_vqa_eval_fails_above_max_skipped(model, tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    rows = [{"image": img, "question": "what color?", "answers": ["red"] * 10, "question_id": n}
            for n, img in enumerate(["a.png", "a.png", "bad.png"])]
    data = tmp_path / "vqa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TooManySkipped, match=r"1 of 3 questions"):
        evaluate_vqa_model(model, str(data), mode="rank", candidates=["red", "blue"], progress=False)
    res = evaluate_vqa_model(model, str(data), mode="rank", candidates=["red", "blue"], progress=False,
                             max_skipped=0.5)
    assert res.meta["samples"] == 2 and res.meta["skipped"]["count"] == 1 and res.meta["skipped"]["of"] == 3


def test_eval_cli_exits_1_and_writes_nothing_above_max_skipped(model, tmp_path, capsys):
    from mmfm.cli import main
    from mmfm.models.checkpoint import save_pretrained

    ckpt = save_pretrained(model, model.model_cfg, tmp_path / "ckpt")
    data, out = _shards_with_one_corrupt_image(tmp_path / "shards"), tmp_path / "ev"
    args = ["eval", "caption", "--model", str(ckpt), data, "--out", str(out), "--max-new-tokens", "3", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 4 images (25.0%) failed to decode" in err and "--max-skipped" in err and ":s2" in err
    assert not out.exists()
    assert main(args + ["--max-skipped", "0.3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["skipped"]["count"] == 1
    assert "3 samples scored, 1 of 4 skipped (25.0% failed to decode" in capsys.readouterr().out
