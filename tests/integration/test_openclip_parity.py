"""open_clip interop: a randomly initialised open_clip model saved with open_clip gives the same embeddings,
preprocessing, tokens and zero-shot classifier through mmfm as through open_clip; checkpoints of it save,
export and load back identically."""
import json

import pytest
import torch
import torch.nn.functional as F

import mmfm
from mmfm.models import export_pretrained, load, save_pretrained
from mmfm.data.transforms import eval_transform

OC_TINY = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TEXTS = ["a photo of a cat.", "a red square !~", "two dogs playing in the snow on a sunny winter day " * 2]


@pytest.fixture(scope="module")
def openclip_files(tmp_path_factory):
    import open_clip
    d = tmp_path_factory.mktemp("oc")
    cfg_path = d / "mmfm_oc_tiny.json"
    cfg_path.write_text(json.dumps(OC_TINY))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("mmfm_oc_tiny")
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
    sd = model.state_dict()
    torch.save(sd, d / "raw.pt")                                    # a bare state dict
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               d / "epoch_3.pt")                                    # open_clip_train's checkpoint layout
    return {"cfg": cfg_path, "dir": d, "model": model.eval(), "preprocess": preprocess,
            "tokenizer": open_clip.get_tokenizer("mmfm_oc_tiny")}


def _images(n=3):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(50 + 7 * i, 80, 3, generator=g) * 255).byte().numpy()) for i in range(n)]


@pytest.mark.parametrize("weights", ["raw.pt", "epoch_3.pt"])
def test_openclip_checkpoint_embeddings_match_open_clip(openclip_files, weights):
    ref, oc_tok, oc_pre = openclip_files["model"], openclip_files["tokenizer"], openclip_files["preprocess"]
    model = mmfm.load(f"openclip:{openclip_files['cfg']}:{openclip_files['dir'] / weights}")
    images = _images()
    mm_pixels = torch.stack([eval_transform(model.preprocess)(im) for im in images])
    oc_pixels = torch.stack([oc_pre(im) for im in images])
    assert torch.allclose(mm_pixels, oc_pixels, atol=1e-6)          # same preprocessing from the dict
    tok = model.tokenizer(TEXTS)
    assert torch.equal(tok["text_ids"], oc_tok(TEXTS))
    with torch.no_grad():
        ref_img = F.normalize(ref.encode_image(oc_pixels), dim=-1)
        ref_txt = F.normalize(ref.encode_text(oc_tok(TEXTS)), dim=-1)
    assert torch.allclose(model.embed_images(images), ref_img, atol=1e-5)
    assert torch.allclose(model.embed_texts(TEXTS), ref_txt, atol=1e-5)
    out = model(oc_pixels, tok["text_ids"], tok["attention_mask"])
    assert torch.allclose(out["logit_scale"], torch.tensor(4.0).exp())


def test_zero_shot_classifier_matches_open_clip_builder(openclip_files):
    from open_clip import build_zero_shot_classifier
    ref, oc_tok = openclip_files["model"], openclip_files["tokenizer"]
    model = load(f"openclip:{openclip_files['cfg']}:{openclip_files['dir'] / 'raw.pt'}")
    labels, templates = ["cat", "dog", "red square", "snow"], ["a photo of a {}.", "a drawing of a {}."]
    with torch.no_grad():
        ref_w = build_zero_shot_classifier(ref, oc_tok, labels, [lambda c, t=t: t.format(c) for t in templates],
                                           device="cpu", use_tqdm=False)
    mm_w = model.zero_shot_classifier(labels, templates)
    assert torch.allclose(mm_w, ref_w, atol=1e-5)
    feats = model.embed_images(_images(4))
    assert torch.equal((feats @ mm_w).argmax(1), (feats @ ref_w).argmax(1))
    assert [r["label"] for r in model.classify(_images(4), labels, templates)] == \
        [labels[i] for i in (feats @ ref_w).argmax(1).tolist()]


def test_openclip_model_saves_exports_and_loads_back_identically(openclip_files, tmp_path):
    model = load(f"openclip:{openclip_files['cfg']}:{openclip_files['dir'] / 'raw.pt'}")
    images, before_txt = _images(2), model.embed_texts(TEXTS)
    before_img = model.embed_images(images)
    save_pretrained(model, None, tmp_path / "ckpt")
    export_pretrained(tmp_path / "ckpt", tmp_path / "export")
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["model"]["openclip"] == str(openclip_files["cfg"]) and cfg["preprocess"] == model.preprocess
    for path in (tmp_path / "ckpt", tmp_path / "export"):
        back = load(path)
        assert torch.equal(back.embed_texts(TEXTS), before_txt) and torch.equal(back.embed_images(images), before_img)


def test_mmfm_text_tower_is_open_clip_text_transformer(openclip_files):
    """mmfm's own text tower loads open_clip text weights as-is and trims padding without changing results."""
    from mmfm.models.text import OpenCLIPTextTower
    ref, oc_tok = openclip_files["model"], openclip_files["tokenizer"]
    tower = OpenCLIPTextTower(context_length=16, width=32, heads=2, layers=2, output_dim=32)
    keys = set(tower.state_dict())
    tower.load_state_dict({k: v for k, v in ref.state_dict().items() if k in keys}, strict=True)
    ids = oc_tok(TEXTS)
    mask = torch.tensor([[1] * (row.argmax().item() + 1) + [0] * (16 - row.argmax().item() - 1) for row in ids])
    with torch.no_grad():
        assert torch.allclose(tower(ids, mask), ref.encode_text(ids), atol=1e-5)
