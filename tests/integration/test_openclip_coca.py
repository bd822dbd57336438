"""open_clip CoCa through the one loader (``openclip:coca_ARCH:FILE``) on transformers 5: a tiny CoCa built from an
open_clip model-config JSON written here, its weights saved by open_clip's state dict. mmfm's greedy captions equal
open_clip's own ``CoCa.generate`` (top_k=1) run in the anchors venv (open_clip 3.3.0 + transformers 4.57; skipped
where that venv is missing); teacher-forced logits equal open_clip's forward; it saves, reloads, trains a step,
and exports back to open_clip with the same weights. Beam captions (2, 3 beams; open_clip's default 6 beams in 3
groups; a minimum length with a repetition penalty) equal open_clip's ``generate(generation_type="beam_search")``
token for token, on a CoCa whose eos competes so that hypotheses finish at different lengths."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ANCHOR_PY = Path(os.environ.get("MMFM_ANCHOR_PY", "/work/main/.bench/anchors/bin/python"))
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                           "attn_pooler_heads": 2},
        "custom_text": True}

pytestmark = pytest.mark.usefixtures("one_thread")

# open_clip 3.3.0 imports BeamSearchScorer from transformers' top level or transformers.generation; transformers
# 4.57 keeps it only in transformers.generation.beam_search, so without help open_clip disables generate(). The
# reference run puts the class where open_clip looks (the top_k path compared here does not use it).
_REFERENCE = r"""
import json, sys, torch, transformers
from transformers.generation.beam_search import BeamSearchScorer
transformers.BeamSearchScorer = BeamSearchScorer
import open_clip
cfg, weights, images, out = sys.argv[1:5]
open_clip.add_model_config(cfg)
name = cfg.rsplit("/", 1)[-1][:-5]
model = open_clip.create_model(name, pretrained=weights).eval()
x = torch.load(images)
with torch.no_grad():
    ids = model.generate(x, generation_type="top_k", top_k=1, seq_len=12, min_seq_len=1)
    text = torch.tensor([[49406, 320, 1929, 539]])
    logits = model(x[:1], text, output_labels=False)["logits"]
json.dump({"ids": ids.tolist(), "logits": logits.tolist()}, open(out, "w"))
"""


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    import open_clip
    d = tmp_path_factory.mktemp("coca")
    cfg = d / "coca_mmfm_tiny.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("coca_mmfm_tiny")
    # open_clip leaves some CoCa tensors zero (every first-step logit equal: a tie top_k=1 breaks at random) and
    # some uninitialised (torch.empty: NaN when the allocator hands back dirty memory): set every one, seeded
    with torch.no_grad():
        for n, p in model.named_parameters():
            norm = p.ndim == 1 and n.endswith("weight") and any(k in n for k in ("ln", "norm"))
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if norm else 0.0))
        for b in model.buffers():
            if b.is_floating_point() and torch.isnan(b).any():
                b.copy_(torch.where(torch.isnan(b), torch.zeros_like(b), b))
    torch.save(model.state_dict(), d / "coca.pt")
    return {"dir": d, "cfg": cfg, "spec": f"openclip:{cfg}:{d / 'coca.pt'}", "oc": model.eval()}


def _images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=g)


def test_coca_loads_as_a_captioner_with_open_clips_logits(coca):
    import mmfm
    model = mmfm.load(coca["spec"], expect="captioner")
    assert type(model).__name__ == "OpenCLIPCoCa" and model.model_cfg.kind == "captioner"
    x = _images()
    text = torch.tensor([[49406, 320, 1929, 539]])
    with torch.no_grad():
        ours = model(image=x[:1], text_ids=text)["logits"]
        theirs = coca["oc"](x[:1], text, output_labels=False)["logits"]
    assert torch.equal(ours, theirs)
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_tensors
    caps = caption_tensors(model, x, GenerateConfig(max_new_tokens=10))
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    from mmfm.config import ConfigError
    with pytest.raises(ConfigError, match="do_sample"):
        model.generate_ids(x, [[]] * 3, do_sample=True)
    with pytest.raises(ConfigError, match="num_beam_groups"):
        model.generate_ids(x, [[]] * 3, num_beams=3, num_beam_groups=2)


@pytest.mark.skipif(not ANCHOR_PY.exists(), reason=f"anchors venv missing ({ANCHOR_PY})")
def test_greedy_captions_equal_open_clip_generate_in_the_anchors_venv(coca, tmp_path):
    import mmfm
    x = _images()
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "ref.py"
    script.write_text(_REFERENCE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    subprocess.run([str(ANCHOR_PY), str(script), str(coca["cfg"]), str(coca["dir"] / "coca.pt"),
                    str(tmp_path / "x.pt"), str(tmp_path / "ref.json")], check=True, env=env, timeout=300)
    ref = json.loads((tmp_path / "ref.json").read_text())
    model = mmfm.load(coca["spec"], expect="captioner")
    # open_clip: sot + up to seq_len - 2 greedy tokens, eos forced at seq_len, pad after eos
    ours = model.generate_ids(x, [[]] * 3, max_new_tokens=10, min_new_tokens=0).tolist()
    eos = model.layout.eos
    assert len({tuple(r) for r in ours}) == 3 and all(r[0] not in (0, eos) for r in ours)   # real, varied captions
    for theirs, mine in zip(ref["ids"], ours):
        t = theirs[1:]
        t = t[: t.index(eos) + 1] if eos in t else t
        m = mine[: mine.index(eos) + 1] if eos in mine else mine
        assert m == t[: len(m)] and (eos in m or t[len(m):] == [eos])
    with torch.no_grad():
        logits = model(image=x[:1], text_ids=torch.tensor([[49406, 320, 1929, 539]]))["logits"]
    assert (logits - torch.tensor(ref["logits"])).abs().max() <= 1e-5


def test_save_reload_train_step_and_export_back_to_open_clip(coca, tmp_path):
    import open_clip

    import mmfm
    from mmfm.cli import main
    from mmfm.models.checkpoint import save_pretrained
    from mmfm.tasks import build_task
    from mmfm.config import load_experiment

    model = mmfm.load(coca["spec"], expect="captioner")
    cfg = load_experiment(data={"task": {"name": "caption"}, "model": {"kind": "captioner",
                                                                       "openclip": str(coca["cfg"])}})
    task = build_task(cfg, model=model.train())
    rows = [model.layout.right_pad(*model.sequence([], t)) for t in ("a photo of a cat", "two dogs")]
    batch = {"image": _images()[:2], **{k: torch.stack([r[k] for r in rows]) for k in rows[0]}}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = task(batch)["loss"]
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    save_pretrained(model.eval(), cfg, tmp_path / "ckpt")
    again = mmfm.load(tmp_path / "ckpt", expect="captioner")
    assert type(again).__name__ == "OpenCLIPCoCa"
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert main(["export", str(tmp_path / "ckpt"), "--format", "openclip", "--out", str(tmp_path / "oc")]) == 0
    info = json.loads((tmp_path / "oc" / "mmfm_export.json").read_text()) if (tmp_path / "oc" /
                                                                             "mmfm_export.json").exists() else {}
    arch = info.get("arch") or next(p.stem for p in (tmp_path / "oc").glob("*.json")
                                    if p.name not in ("open_clip_config.json", "mmfm_export.json"))
    open_clip.add_model_config(str(tmp_path / "oc" / f"{arch}.json"))
    oc = open_clip.create_model(arch, pretrained=str(tmp_path / "oc" / "open_clip_model.safetensors")).eval()
    text = torch.tensor([[49406, 320, 1929, 539]])
    x = _images()[:1]
    with torch.no_grad():
        assert torch.equal(oc(x, text, output_labels=False)["logits"], again(image=x, text_ids=text)["logits"])


# beam search as open_clip runs it: (open_clip generate kwargs, mmfm generate_ids kwargs)
BEAM_SETTINGS = [
    ({"num_beams": 2, "num_beam_groups": 1, "seq_len": 12, "min_seq_len": 1},
     {"num_beams": 2, "max_new_tokens": 11, "min_new_tokens": 0}),
    ({"num_beams": 3, "num_beam_groups": 1, "seq_len": 12, "min_seq_len": 1},
     {"num_beams": 3, "max_new_tokens": 11, "min_new_tokens": 0}),
    ({"num_beams": 3, "num_beam_groups": 1, "seq_len": 12, "min_seq_len": 10, "repetition_penalty": 1.3},
     {"num_beams": 3, "max_new_tokens": 11, "min_new_tokens": 9, "repetition_penalty": 1.3}),
    ({"num_beams": 6, "num_beam_groups": 3, "seq_len": 12, "min_seq_len": 1},         # open_clip's defaults
     {"num_beams": 6, "num_beam_groups": 3, "max_new_tokens": 11, "min_new_tokens": 0}),
]

_BEAM_REFERENCE = r"""
import json, sys, torch, transformers
from transformers.generation.beam_search import BeamSearchScorer
transformers.BeamSearchScorer = BeamSearchScorer
import open_clip
cfg, weights, images, settings, out = sys.argv[1:6]
open_clip.add_model_config(cfg)
name = cfg.rsplit("/", 1)[-1][:-5]
model = open_clip.create_model(name, pretrained=weights).eval()
x = torch.load(images)
res = {}
with torch.no_grad():
    res["greedy"] = model.generate(x, generation_type="top_k", top_k=1, seq_len=12, min_seq_len=1).tolist()
    res["beam"] = [model.generate(x, generation_type="beam_search", **kw).tolist() for kw in json.loads(settings)]
json.dump(res, open(out, "w"))
"""


@pytest.fixture(scope="module")
def coca_eos(coca):
    """The tiny CoCa with its eos column near a token it often picks: captions end at different lengths, some
    run to the maximum, so finished and running hypotheses both decide the beam results."""
    sd = {k: v.clone() for k, v in coca["oc"].state_dict().items()}
    proj = sd["text_decoder.text_projection"]
    proj[:, 49407] += proj[:, 2035]
    torch.save(sd, coca["dir"] / "coca_eos.pt")
    return {**coca, "spec": f"openclip:{coca['cfg']}:{coca['dir'] / 'coca_eos.pt'}",
            "weights": coca["dir"] / "coca_eos.pt"}


def _upto_eos(row, eos):
    return row[: row.index(eos) + 1] if eos in row else row


@pytest.mark.skipif(not ANCHOR_PY.exists(), reason=f"anchors venv missing ({ANCHOR_PY})")
def test_beam_captions_equal_open_clip_beam_search_in_the_anchors_venv(coca_eos, tmp_path):
    import mmfm
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "ref.py").write_text(_BEAM_REFERENCE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    subprocess.run([str(ANCHOR_PY), str(tmp_path / "ref.py"), str(coca_eos["cfg"]), str(coca_eos["weights"]),
                    str(tmp_path / "x.pt"), json.dumps([oc for oc, _ in BEAM_SETTINGS]), str(tmp_path / "ref.json")],
                   check=True, env=env, timeout=300)
    ref = json.loads((tmp_path / "ref.json").read_text())
    model = mmfm.load(coca_eos["spec"], expect="captioner")
    eos = model.layout.eos
    greedy = model.generate_ids(x, [[]] * 4, max_new_tokens=10, min_new_tokens=0).tolist()
    for theirs, mine in zip(ref["greedy"], greedy):          # open_clip's top_k forces eos at seq_len
        t, m = _upto_eos(theirs[1:], eos), _upto_eos(mine, eos)
        assert m == t[: len(m)] and (eos in m or t[len(m):] == [eos])
    lengths = set()
    for (oc_kw, kw), theirs in zip(BEAM_SETTINGS, ref["beam"]):
        mine = model.generate_ids(x, [[]] * 4, **kw).tolist()
        assert [_upto_eos(r, eos) for r in mine] == [_upto_eos(r[1:], eos) for r in theirs], oc_kw
        lengths |= {len(_upto_eos(r, eos)) if eos in r else None for r in mine}
    assert None in lengths and len(lengths) >= 3           # finished at several lengths, and run to the maximum
    greedy = model.generate_ids(x, [[]] * 4, max_new_tokens=11, min_new_tokens=0).tolist()
    beams = [model.generate_ids(x, [[]] * 4, **kw).tolist() for _, kw in BEAM_SETTINGS[:2]]
    assert any(_upto_eos(b, eos) != _upto_eos(g, eos) for bs in beams for b, g in zip(bs, greedy))   # not greedy


def test_caption_and_vqa_commands_beam_search_a_coca(coca_eos, tmp_path, capsys):
    import mmfm
    from mmfm.cli import main
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_images
    root = Path(__file__).resolve().parents[2]
    folder = root / "data_recipes" / "coco_captions" / "fixture" / "images"
    flags = ["--num-beams", "3", "--min-new-tokens", "0", "--max-new-tokens", "8", "--quiet"]
    out = tmp_path / "alt.jsonl"
    assert main(["caption", "--model", coca_eos["spec"], str(folder), "--out", str(out), *flags]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    model = mmfm.load(coca_eos["spec"], expect="captioner")
    paths = sorted(str(p) for p in folder.iterdir())
    gen = GenerateConfig(num_beams=3, min_new_tokens=0, max_new_tokens=8)
    lib = caption_images(model, paths, gen, alt_text=False)
    assert len(rows) == len(paths) >= 3 and all(r["error"] is None for r in rows)
    assert sorted(r["caption"] for r in rows) == sorted(r["caption"] for r in lib)
    greedy = caption_images(model, paths, GenerateConfig(min_new_tokens=0, max_new_tokens=8), alt_text=False)
    assert [r["caption"] for r in lib] != [r["caption"] for r in greedy]
    capsys.readouterr()
    assert main(["vqa", "--model", coca_eos["spec"], paths[0], "--question", "what is it?", *flags]) == 0
    assert capsys.readouterr().out.strip()


def test_serve_answers_beam_alt_text_from_a_coca(coca_eos, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from PIL import Image

    import mmfm
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_images
    from mmfm.serve.app import ServeLimits, create_app
    from mmfm.serve.engine import load_engine
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "noise.png"
    Image.fromarray((torch.rand(48, 64, 3, generator=g) * 255).byte().numpy()).save(path)
    engine = load_engine([coca_eos["spec"]], threads=1)
    app = create_app(engine, ServeLimits(max_batch=4, max_wait_ms=5))
    fields = {"num_beams": "3", "min_new_tokens": "0", "max_new_tokens": "8"}
    with TestClient(app) as c:
        assert c.get("/health").json()["models"]["captioner"]["class"] == "OpenCLIPCoCa"
        r = c.post("/caption", files={"image": ("noise.png", path.read_bytes(), "image/png")}, data=fields)
    assert r.status_code == 200, r.text
    body = r.json()
    model = mmfm.load(coca_eos["spec"], expect="captioner")
    lib = caption_images(model, [str(path)], GenerateConfig(num_beams=3, min_new_tokens=0, max_new_tokens=8),
                         alt_text=False)
    assert body["caption"] == lib[0]["caption"] and body["alt_text"] and "confidence" in body
