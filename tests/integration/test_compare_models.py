"""``mmfm eval compare MODEL [MODEL ...] --data ...`` on real tiny models and real files: CLIP (zero-shot,
linear/few-shot probes, retrieval) and captioners (caption metrics, perplexity, VQA accuracy and token F1),
with paired deltas, JSON/CSV/HTML output, and the probe and perplexity training hooks."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from mmfm.config import ConfigError, load_experiment
from mmfm.models import build_model, save_pretrained

FIXTURE = Path(__file__).resolve().parents[2] / "data_recipes"
FOLDER = FIXTURE / "image_folder" / "fixture"
IMAGES = FIXTURE / "csv_pairs" / "fixture" / "images"
CAPS = (("0.jpg", "a red circle"), ("1.jpg", "a blue square"), ("3.jpg", "a red square"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_pretrained(build_model("tiny"), None, d / f"clip{seed}")
    torch.manual_seed(0)
    save_pretrained(build_model("tiny_captioner"), None, d / "cap0")
    shutil.copytree(d / "cap0", d / "cap1")                  # the same weights under another name
    (d / "caps.jsonl").write_text("".join(json.dumps({"image": str(IMAGES / n), "caption": c}) + "\n"
                                          for n, c in CAPS))
    (d / "vqa.jsonl").write_text("".join(json.dumps({"image": str(IMAGES / n), "question": "what is it?",
                                                     "answers": [c, "a shape"], "question_id": i}) + "\n"
                                         for i, (n, c) in enumerate(CAPS)))
    return d


def test_compare_clip_models_writes_json_csv_html_with_paired_deltas(setup, tmp_path, capsys):
    from mmfm.commands.eval import main as eval_main
    a, b = str(setup / "clip0"), str(setup / "clip1")
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match="clip0 is given twice"):
        eval_main(["compare", a, a, "--data", str(FOLDER)])
    assert eval_main(["compare", a, b, "--data", f"new={FOLDER}", "--data", f"old={setup / 'caps.jsonl'}",
                      "--probe-train", str(FOLDER), "--fewshot", "1,2,5", "--bootstrap", "200",
                      "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "compare.json").read_text())
    metrics = {(r["data"], r["metric"]) for r in res["rows"]}
    assert {("new", "zero-shot top1"), ("new", "zero-shot macro_f1"), ("new", "zero-shot mean_per_class_recall"),
            ("new", "linear probe top1"), ("new", "1-shot probe top1"), ("new", "2-shot probe top1"),
            ("old", "image_to_text R@1"), ("old", "text_to_image R@10")} <= metrics
    assert ("new", "5-shot probe top1") not in metrics                    # 3 images per class: left out, said so
    assert any("5-shot probe top1 left out" in n and "only 3" in n for n in res["notes"]) and "note:" in printed
    for (data, metric) in metrics:
        rows = [r for r in res["rows"] if (r["data"], r["metric"]) == (data, metric)]
        ref, other = rows
        assert ref["delta"] is None and ref["n"] == (6 if data == "new" else 3)
        assert other["delta"] == pytest.approx(other["value"] - ref["value"])
        assert other["ci95"][0] <= other["delta"] <= other["ci95"][1]
    assert res["bootstrap"] == {"n_boot": 200, "seed": 0, "paired": True}
    table = list(csv.DictReader((out / "compare.csv").open()))
    assert len(table) == len(res["rows"]) and table[0].keys() >= {"data", "metric", "model", "delta", "ci95_low"}
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html and "linear probe top1" in html and "wrote" in printed


@pytest.mark.slow
def test_compare_captioners_scores_captions_perplexity_and_vqa(setup):
    from mmfm.config.caption import GenerateConfig
    from mmfm.eval.compare.suite import compare_suite
    res = compare_suite([str(setup / "cap0"), str(setup / "cap1")], [str(setup / "caps.jsonl"),
                        f"q={setup / 'vqa.jsonl'}"], gen=GenerateConfig(max_new_tokens=4), n_boot=50, progress=False)
    rows = res.metrics["rows"]
    assert [d["kind"] for d in res.meta["data"]] == ["captions", "vqa"]
    got = {(r["data"], r["metric"]) for r in rows}
    assert got == {("caps", m) for m in ("BLEU-4", "CIDEr-D", "ROUGE-L", "perplexity", "repetition loops",
                                         "empty captions")} | {("q", "VQA accuracy"), ("q", "token F1")}
    # eval caption's degenerate-output counts come along: as shares per model (lower is better) and in the notes
    from mmfm.eval.captioning.caption import evaluate_captions
    from mmfm.models.checkpoint import load
    deg = evaluate_captions(load(str(setup / "cap0")), str(setup / "caps.jsonl"), GenerateConfig(max_new_tokens=4),
                            progress=False).meta["degenerate"]
    loops = next(r for r in rows if r["metric"] == "repetition loops")
    assert loops["higher_is_better"] is False and loops["value"] == pytest.approx(deg["repetition_frac"])
    assert next(r for r in rows if r["metric"] == "empty captions")["value"] == pytest.approx(deg["empty_frac"])
    assert any(n.endswith(f"degenerate: {deg['repetition_loops']} repetition loops, {deg['empty']} empty, "
                          f"{deg['distinct_captions']} distinct captions of 3") for n in res.meta["notes"])
    ppl = [r for r in rows if r["metric"] == "perplexity"]
    assert ppl[0]["higher_is_better"] is False and ppl[0]["value"] > 1 and ppl[0]["n"] == 3
    for r in rows[1::2]:                              # the same weights: no difference, in every draw
        assert r["delta"] == 0 and r["ci95"] == [0.0, 0.0] and r["improved"] is None


def test_perplexity_is_exp_of_the_caption_task_loss(setup):
    """Perplexity per token over a set = exp(the caption task's token-mean loss over the same captions)."""
    import mmfm
    from PIL import Image

    from mmfm.eval.captioning.perplexity import caption_nll, perplexity
    from mmfm.tasks.caption import CaptionProcessor, shifted_token_loss
    from mmfm.data.transforms import eval_transform
    model = mmfm.load(setup / "cap0")
    items = [{"key": n, "image": str(IMAGES / n), "references": [c], "name": n} for n, c in CAPS]
    got = caption_nll(model, items, batch_size=2)
    assert got["tokens"] == [len(model.encode_plain(c)) + 1 for _, c in CAPS]     # caption tokens + eos
    proc = CaptionProcessor(eval_transform(model), model.layout, [])
    rows = [proc({"__key__": n, "image": Image.open(IMAGES / n).convert("RGB"), "txt": c}) for n, c in CAPS]
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "key"}
    with torch.no_grad():
        logits = model(image=batch["image"], text_ids=batch["text_ids"], attention_mask=batch["attention_mask"])
        loss = shifted_token_loss(logits["logits"], batch["labels"])
    assert perplexity(got["nll"], got["tokens"]) == pytest.approx(torch.exp(loss).item(), rel=1e-5)


def test_compare_refuses_mixed_kinds_and_missing_data(setup, tmp_path):
    from mmfm.commands.eval import main as eval_main
    from mmfm.eval.compare.suite import compare_suite
    with pytest.raises(ConfigError, match="cap0 is a captioner, the first model is a clip"):
        compare_suite([str(setup / "clip0"), str(setup / "cap0")], [str(setup / "caps.jsonl")], progress=False)
    with pytest.raises(ConfigError, match="--data .*nope: not found"):
        compare_suite([str(setup / "clip0")], [str(tmp_path / "nope")], progress=False)
    with pytest.raises(ConfigError, match="at least one --data"):
        eval_main(["compare", str(setup / "clip0")])


def test_probe_and_perplexity_hooks(setup):
    from mmfm.eval.hooks import build_eval_hooks
    from mmfm.tasks import build_task
    cfg = load_experiment(data={"model": {"name": "tiny"}, "eval": {"linear_probe_train": str(FOLDER),
                                                                   "zeroshot_folder": str(FOLDER)}})
    task = build_task(cfg)
    task.train()
    out = {}
    for hook in build_eval_hooks(cfg):
        out.update(hook(task, 1))
    assert 0 <= out["probe/top1"] <= 1 and "zeroshot/macro_f1" in out and task.model.training
    cap = load_experiment(data={"model": {"name": "tiny_captioner"},
                                "eval": {"perplexity_data": str(setup / "caps.jsonl")}})
    (hook,) = build_eval_hooks(cap)
    ctask = build_task(cap)
    from mmfm.eval.captioning.perplexity import caption_nll, perplexity
    from mmfm.eval.captioning.data import read_caption_data
    nll = caption_nll(ctask.model, read_caption_data(str(setup / "caps.jsonl")))
    assert hook(ctask, 1)["perplexity/ppl"] == pytest.approx(perplexity(nll["nll"], nll["tokens"]))
    with pytest.raises(ConfigError, match="eval.perplexity_data: perplexity needs a captioner"):
        build_eval_hooks(load_experiment(data={"model": {"name": "tiny"},
                                               "eval": {"perplexity_data": str(setup / "caps.jsonl")}}))
    with pytest.raises(ConfigError, match="linear_probe_test"):
        build_eval_hooks(load_experiment(data={"model": {"name": "tiny"}, "eval": {"linear_probe_train": str(FOLDER)}}))


def test_each_domain_probes_with_its_own_train_folder(setup, tmp_path):
    """The forgetting check: the new domain's probe trains on new-domain images and the old domain's on old ones
    (``--probe-train new=... --probe-train old=...``), scored on each data set's own folder."""
    from mmfm.commands.eval import main as eval_main
    from mmfm.demo.fashion_mnist import write_fashion_folders
    from mmfm.eval.compare.data import probe_folders
    from tests.helpers import fake_fashion
    fm = write_fashion_folders(tmp_path / "fm", train_per_class=2, test_per_class=1,
                               source=fake_fashion(tmp_path / "src"))
    out = tmp_path / "cmp"
    assert eval_main(["compare", str(setup / "clip0"), str(setup / "clip1"), "--data", f"new={FOLDER}",
                      "--data", f"old={fm['test']}", "--probe-train", f"new={FOLDER}", "--probe-train",
                      f"old={fm['train']}", "--fewshot", "1,2", "--bootstrap", "50", "--out", str(out),
                      "--quiet"]) == 0
    res = json.loads((out / "compare.json").read_text())
    n = {(r["data"], r["metric"]): r["n"] for r in res["rows"]}
    assert n[("new", "linear probe top1")] == 6 and n[("old", "linear probe top1")] == 10     # each its own test
    assert ("old", "2-shot probe top1") in n and ("new", "2-shot probe top1") in n
    assert res["probe"]["train"] == {"new": str(FOLDER), "old": str(fm["train"])}
    # a bare folder serves every data set without its own; a named one must name a --data
    assert probe_folders(["A", "old=B"], ["new", "old"]) == {"new": "A", "old": "B"}
    assert probe_folders(None, ["new"]) == {}
    with pytest.raises(ConfigError, match="no --data is named 'olds'"):
        probe_folders(["olds=B"], ["new", "old"])
    with pytest.raises(ConfigError, match="two unnamed train folders"):
        probe_folders(["A", "B"], ["new"])
    with pytest.raises(ConfigError, match="its classes .* differ"):        # the old folder cannot probe the new set
        eval_main(["compare", str(setup / "clip0"), "--data", f"new={FOLDER}", "--probe-train", str(fm["train"]),
                   "--out", str(out), "--quiet"])
