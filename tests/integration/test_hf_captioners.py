"""Pretrained transformers captioners under mmfm's one loader: tiny random BLIP, GIT, VisionEncoderDecoder and
LLaVA models saved by transformers' own save_pretrained with their processors. mmfm's captions equal the
library's generate token for token (greedy and beam), its training loss equals the library's loss with labels,
VQA answers match (LLaVA), training through ``mmfm train --init-from hf:DIR`` changes the weights and the run
exports back to a folder transformers loads with equal logits."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("blip", "git", "ved", "llava")
PROMPT = {"blip": "a photo of", "git": "a photo of", "ved": "", "llava": "a photo of"}


@pytest.fixture(scope="module")
def folders(hf_captioner):
    return {f: hf_captioner(f) for f in FAMILIES}


def _images(n=2):
    return [Image.fromarray((np.random.RandomState(i).rand(40, 48, 3) * 255).astype("uint8")) for i in range(n)]


def _library(folder):
    import transformers as T
    return T.AutoModelForImageTextToText.from_pretrained(folder).eval(), T.AutoProcessor.from_pretrained(folder)


def _library_prompt_ids(family, proc, model, prompt, n):
    """The ids the library's own recipe gives ``generate`` for ``prompt`` (before the new tokens)."""
    tok = proc.tokenizer
    plain = tok(prompt, add_special_tokens=False).input_ids if prompt else []
    if family == "llava":
        return proc(images=_images(n), text=["<image>" + prompt] * n, return_tensors="pt")["input_ids"]
    if family == "blip":
        return proc(text=[prompt] * n, return_tensors="pt")["input_ids"]
    start = model.config.decoder_start_token_id if family == "ved" else tok.cls_token_id
    return torch.tensor([[start] + plain] * n)


def _library_generate(family, ref, proc, prompt, **kw):
    images = _images()
    pv = proc(images=images, return_tensors="pt")["pixel_values"]
    ids = _library_prompt_ids(family, proc, ref, prompt, len(images))
    if family == "ved":
        return ref.generate(pixel_values=pv, decoder_input_ids=ids, **kw)[:, ids.shape[1]:]
    if family == "blip":          # BLIP's generate swaps [CLS] for its bos and drops the trailing [SEP]
        return ref.generate(pixel_values=pv, input_ids=ids, **kw)[:, ids.shape[1] - 1:]
    if family == "llava":
        return ref.generate(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids), **kw)[:, ids.shape[1]:]
    return ref.generate(pixel_values=pv, input_ids=ids, **kw)[:, ids.shape[1]:]


@pytest.mark.parametrize("family", FAMILIES)
def test_captions_equal_library_generate(folders, family):
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_images, generation_kwargs
    from mmfm.models.checkpoint import load

    model = load(f"hf:{folders[family]}", expect="captioner")
    ref, proc = _library(folders[family])
    pv = torch.stack([model.image_transform()(i) for i in _images()])
    for beams in (1, 3):
        gen = GenerateConfig(num_beams=beams, max_new_tokens=8, prompt=PROMPT[family])
        kw = generation_kwargs(gen)
        ours = model.generate_ids(pv, [model.encode_plain(PROMPT[family])] * 2, **kw)
        lib = _library_generate(family, ref, proc, PROMPT[family], **kw)
        assert ours.tolist() == lib.tolist(), (family, beams)
        texts = [r["caption"] for r in caption_images(model, _images(), gen, alt_text=False)]
        assert texts == [" ".join(proc.tokenizer.decode(r, skip_special_tokens=True).split()).replace(" .", ".")
                         .replace(" ?", "?").replace(" :", ":") for r in lib.tolist()]


def _library_loss(family, ref, proc, prompt, captions):
    """The library's loss for the hand-built recipe: prompt + caption + eos, labels -100 on prompt and padding."""
    tok, images = proc.tokenizer, _images(len(captions))
    pv = proc(images=images, return_tensors="pt")["pixel_values"]
    head = _library_prompt_ids(family, proc, ref, prompt, 1)[0].tolist()
    if family == "blip":
        head = [ref.config.text_config.bos_token_id] + head[1:-1]      # generation's start: [DEC], no [SEP]
        eos = ref.config.text_config.sep_token_id
    else:
        eos = ref.config.eos_token_id if family == "git" else ref.generation_config.eos_token_id
    rows = [head + tok(c, add_special_tokens=False).input_ids + [eos] for c in captions]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :len(head)] = -100
    if family == "ved":           # the library shifts the labels right behind the decoder start itself
        return ref(pixel_values=pv, labels=labels[:, 1:]).loss
    if family == "blip":
        return ref(pixel_values=pv, input_ids=ids, attention_mask=mask, labels=labels).loss
    return ref(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels).loss


@pytest.mark.parametrize("family", FAMILIES)
def test_training_loss_equals_library_loss(folders, family):
    from mmfm.config import load_experiment
    from mmfm.data.collate import collate_dicts
    from mmfm.tasks import build_task

    spec = f"hf:{folders[family]}"
    model = {"kind": "captioner", "decoder": {"prompt": PROMPT[family], "max_length": 16}}
    cfg = load_experiment(data={"task": {"name": "caption"}, "train": {"init_from": spec}, "model": model})
    assert cfg.model.source == spec and cfg.model.kind == "captioner"
    task = build_task(cfg).eval()
    captions = ["a red cat sits on the mat", "two dogs"]
    proc = task.processor(train=False)
    batch = collate_dicts([proc({"image": im, "txt": c, "__key__": str(i)})
                           for i, (im, c) in enumerate(zip(_images(), captions))])
    ref, hf_proc = _library(folders[family])
    with torch.no_grad():
        ours = task(batch)["loss"]
        lib = _library_loss(family, ref, hf_proc, PROMPT[family], captions)
    assert abs(float(ours) - float(lib)) <= 1e-5, (family, float(ours), float(lib))


def test_vqa_answers_equal_library_generate(folders):
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import answer_questions, generation_kwargs
    from mmfm.models.checkpoint import load

    model = load(f"hf:{folders['llava']}", expect="captioner")
    ref, proc = _library(folders["llava"])
    questions = ["what color is it?", "is it a cat?"]
    pv = torch.stack([model.image_transform()(i) for i in _images()])
    gen = GenerateConfig(num_beams=1, max_new_tokens=5)
    ours = answer_questions(model, pv, questions, gen)
    texts = ["<image>" + f"question: {q} answer:" for q in questions]
    lib = []
    for im, t in zip(_images(), texts):           # one by one: no padding on the library side
        inp = proc(images=[im], text=[t], return_tensors="pt")
        out = ref.generate(**inp, **generation_kwargs(gen))[:, inp["input_ids"].shape[1]:]
        lib.append(model.decode(out[0]))
    assert ours == [" ".join(a.split()).replace(" ?", "?") for a in lib]


def _shards(root):
    from mmfm.data.shards import write_shards
    from tests.integration.train_helpers import png

    caps = ["a red cat", "a blue dog", "two green mat", "the cat sits on a mat"]
    write_shards(({"__key__": f"k{i:03d}", "png": png(i), "txt": caps[i % 4]} for i in range(16)), root,
                 shard_size=8)
    return str(root)


@pytest.mark.parametrize("family,lora", [("blip", False), ("blip", True), ("git", True), ("ved", True),
                                         ("llava", True)])
def test_train_init_from_hf_changes_weights_and_exports_back(folders, family, lora, tmp_path):
    import yaml
    from transformers import AutoModelForImageTextToText

    from mmfm.models.checkpoint import load

    spec = f"hf:{folders[family]}"
    model = {"decoder": {"max_length": 16}}
    if lora:
        model["lora"] = {"r": 4, "towers": ["decoder"]}      # the same tower name as for mmfm's own captioners
    cfg = {"task": {"name": "caption"}, "model": model,
           "data": {"train": [{"path": _shards(tmp_path / "shards")}], "batch_size": 4, "workers": 0,
                    "shuffle_buffer": 4},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "lr": 1e-2, "warmup_steps": 0,
                     "log_every": 1, "ckpt_every_steps": None, "progress": False, "tensorboard": False},
           "generate": {"num_beams": 2, "max_new_tokens": 6}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--init-from", spec]) == 0
    step = tmp_path / "run" / "checkpoints"
    from mmfm.models.layout import resolve_latest
    assert (resolve_latest(step) / "hf_model" / "processor_config.json").is_file()   # the processor travels along
    trained = load(str(tmp_path / "run"), expect="captioner")       # rebuilt from the run's own hf_model/
    start = AutoModelForImageTextToText.from_pretrained(folders[family]).state_dict()
    changed = [k for k, v in trained.hf.state_dict().items() if not torch.equal(v, start[k])]
    decoder = [p.removeprefix("hf.") + "." for p in trained.tower_paths["decoder"]]
    assert decoder and changed and (not lora or all(k.startswith(tuple(decoder)) for k in changed))
    assert trained.generate_config.num_beams == 2

    out = tmp_path / "export"
    assert cli(["export", str(tmp_path / "run"), "--format", "transformers", "--out", str(out)]) == 0
    info = json.loads((out / "mmfm_export.json").read_text())
    assert info["class"] == type(trained.hf).__name__ and info["parity_max_abs_diff"] <= 1e-5
    back = AutoModelForImageTextToText.from_pretrained(str(out))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in trained.hf.state_dict().items())

    images = tmp_path / "imgs"
    images.mkdir()
    for i, im in enumerate(_images()):
        im.save(images / f"{i}.png")
    assert cli(["caption", "--model", f"hf:{out}", str(images), "--out", str(tmp_path / "alt.jsonl"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "alt.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["error"] is None for r in rows)


def test_refusals_name_class_families_and_missing_processor(hf_captioner, tmp_path, capsys):
    import transformers as T

    bert = T.BertModel(T.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))
    bert.save_pretrained(str(tmp_path / "bert"))
    out, image = tmp_path / "alt.jsonl", tmp_path / "cat.png"
    _images(1)[0].save(image)
    capsys.readouterr()
    assert cli(["caption", "--model", f"hf:{tmp_path / 'bert'}", str(image), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "BertModel" in err and "BlipForConditionalGeneration" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and not out.exists()

    folder = tmp_path / "blip"
    shutil.copytree(hf_captioner("blip"), folder)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        os.remove(folder / name)
    capsys.readouterr()
    assert cli(["caption", "--model", f"hf:{folder}", str(image), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "no processor beside the weights" in err and str(folder) in err and not out.exists()


def test_offline_hub_id_names_the_hub_not_the_demo_clip(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    from tests.integration.train_helpers import ROOT
    rc = cli(["train", str(ROOT / "configs/experiments/demo/caption.yaml"), "--init-from",
              "hf:Salesforce/blip-image-captioning-base", "--set", f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc != 0 and "Salesforce/blip-image-captioning-base" in err and "Hugging Face hub" in err
    assert "runs/demo/clip" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())      # nothing written


@pytest.mark.parametrize("family", FAMILIES)
def test_caption_confidence_from_generate_logits_equals_the_teacher_forced_pass(folders, family):
    """``caption_images`` takes a transformers captioner's confidence from the logits ``generate`` already
    computed (no second pass through the vision tower): the same value as the teacher-forced pass."""
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_confidence, caption_images
    from mmfm.models.hf_captioner import load_hf_spec

    model = load_hf_spec(f"hf:{folders[family]}").eval()
    images, gen = _images(3), GenerateConfig(max_new_tokens=6, min_new_tokens=2, prompt=PROMPT[family], batch_size=2)
    rows = caption_images(model, images, gen, alt_text=False)
    prefix = model.encode_plain(PROMPT[family]) if PROMPT[family] else []
    pv = torch.stack([model.image_transform()(im) for im in images])
    steps: list = []
    new = model.generate_ids(pv, [prefix] * 3, max_new_tokens=6, min_new_tokens=2, step_logits=steps)
    assert steps and steps[0].shape[:2] == new.shape
    hand = caption_confidence(model, pv, prefix, new)
    assert [r["confidence"] for r in rows] == pytest.approx(hand, abs=1e-4)
    assert [r["caption"] for r in rows] == [clean(model.decode(row)) for row in new]


def clean(text):
    from mmfm.generate import clean_caption
    return clean_caption(text)


@pytest.mark.parametrize("family", ["blip", "git", "ved", "llava"])
def test_tower_names_mean_the_library_models_vision_and_decoder(folders, family):
    """``vision`` and ``decoder`` name each family's image encoder and text stack (disjoint, both present), and
    ``vision.lock`` freezes exactly the vision tower: GIT's lived under ``git.image_encoder``, where the lock did
    not look."""
    from mmfm.models.hf_captioner import HFCaptioner

    m = HFCaptioner(f"hf:{folders[family]}")
    vision, decoder = m.tower_paths["vision"], m.tower_paths["decoder"]
    assert vision and decoder and not set(vision) & set(decoder)
    m.lock_image_tower()
    frozen = {k for k, p in m.named_parameters() if not p.requires_grad}
    assert frozen and all(k.startswith(tuple(p + "." for p in vision)) for k in frozen)
    assert frozen == {k for k, _ in m.named_parameters() if k.startswith(tuple(p + "." for p in vision))}
