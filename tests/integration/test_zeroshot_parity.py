"""Zero-shot parity with open_clip: a random open_clip model saved with open_clip, classified through
``mmfm zeroshot``'s code, gives the same top-1 (and the same per-image predictions and logits) as open_clip's
own ``build_zero_shot_classifier`` + open_clip preprocessing over a torchvision ImageFolder."""
import json

import pytest
import torch

from mmfm.eval.zeroshot.classify import zeroshot_classify

OC_TINY = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
CLASSES = ["golden_retriever", "red_fox", "tabby_cat", "zebra", "fire_truck", "teapot"]
CLASSES_SORTED = sorted(CLASSES)


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    import open_clip
    d = tmp_path_factory.mktemp("oczs")
    cfg = d / "mmfm_zs_tiny.json"
    cfg.write_text(json.dumps(OC_TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(1)
    model, _, preprocess = open_clip.create_model_and_transforms("mmfm_zs_tiny")
    torch.save(model.state_dict(), d / "weights.pt")
    return {"spec": f"openclip:{cfg}:{d / 'weights.pt'}", "model": model.eval(), "preprocess": preprocess,
            "tokenizer": open_clip.get_tokenizer("mmfm_zs_tiny")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("zsfolder")
    g = torch.Generator().manual_seed(0)
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(4):
            arr = (torch.rand(30 + 9 * i, 44, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _open_clip_reference(oc, folder, templates):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(str(folder), transform=oc["preprocess"])
    names = [c.replace("_", " ") for c in ds.classes]
    with torch.no_grad():
        clf = build_zero_shot_classifier(oc["model"], oc["tokenizer"], names, templates, num_classes_per_batch=4)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        logits = oc["model"].encode_image(images, normalize=True) @ clf
    targets = torch.tensor(ds.targets)
    return logits, targets, [p for p, _ in ds.samples], clf


def test_zeroshot_top1_equals_open_clip_classifier(oc, folder, tmp_path):
    from open_clip import zero_shot_metadata
    templates = [t("{}") for t in zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES]
    ref_logits, targets, ref_paths, ref_clf = _open_clip_reference(oc, folder, zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES)
    ref_top1 = float((ref_logits.argmax(1) == targets).float().mean())
    ref_top5 = float((ref_logits.topk(5, dim=1).indices == targets[:, None]).any(1).float().mean())

    res = zeroshot_classify(oc["spec"], folder, templates="openai-simple", workers=0, batch_size=7,
                            cache=tmp_path / "cache", progress=False)
    # mmfm divides counts in float64, open_clip's reference takes a float32 mean: equal to float32 precision
    assert res.metrics["top1"] == pytest.approx(ref_top1, rel=1e-6)
    assert res.metrics["top5"] == pytest.approx(ref_top5, rel=1e-6)
    assert [str(folder / r["path"]) for r in res.predictions] == ref_paths          # ImageFolder order
    assert [r["pred"] for r in res.predictions] == [CLASSES_SORTED[i] for i in ref_logits.argmax(1)]
    assert 0 < ref_top1 < 1                      # a random model: some right, some wrong (not a degenerate check)

    # the same numbers underneath: classifier and every logit
    import mmfm
    from mmfm.eval.zeroshot.classifier import build_classifier
    model = mmfm.load(oc["spec"])
    clf = build_classifier(model, [c.replace("_", " ") for c in CLASSES_SORTED], templates)
    assert torch.allclose(clf, ref_clf, atol=1e-5)
    scale = oc["model"].logit_scale.exp().clamp(max=100)
    ref_scores = (scale * ref_logits).softmax(1).max(1).values
    assert torch.allclose(torch.tensor([r["score"] for r in res.predictions]), ref_scores, atol=2e-6)
    assert res.meta["n_samples"] == len(ref_paths) and res.meta["templates"] == "openai-simple"


def test_classifier_cache_hit_and_key(oc, folder, tmp_path):
    from safetensors.torch import load_file, save_file
    cache = tmp_path / "cache"
    a = zeroshot_classify(oc["spec"], folder, templates="simple", workers=0, cache=cache, progress=False)
    files = list((cache / "zeroshot").glob("*.safetensors"))
    assert len(files) == 1
    # prove the second run reads the cache: swap two class columns in the cached classifier
    w = load_file(str(files[0]))["classifier"]
    save_file({"classifier": w[:, [1, 0, *range(2, w.shape[1])]].contiguous()}, str(files[0]))
    b = zeroshot_classify(oc["spec"], folder, templates="simple", workers=0, cache=cache, progress=False)
    swap = {CLASSES_SORTED[0]: CLASSES_SORTED[1], CLASSES_SORTED[1]: CLASSES_SORTED[0]}
    assert [swap.get(r["pred"], r["pred"]) for r in a.predictions] == [r["pred"] for r in b.predictions]
    zeroshot_classify(oc["spec"], folder, templates="openai-simple", workers=0, cache=cache, progress=False)
    assert len(list((cache / "zeroshot").glob("*.safetensors"))) == 2              # new prompts, new entry
    c = zeroshot_classify(oc["spec"], folder, templates="simple", workers=0, cache=cache, use_cache=False,
                          progress=False)
    assert [r["pred"] for r in c.predictions] == [r["pred"] for r in a.predictions]


def test_length_sorted_trimmed_text_encoding_equals_open_clip(oc):
    import mmfm
    from mmfm.eval.embedding import _trimmed_openclip_text, encode_texts
    model = mmfm.load(oc["spec"])
    assert _trimmed_openclip_text(model) is not None                  # the fast path is the one tested here
    texts = ["a cat.", "itap of a very small and very fluffy dog in the snow.", "x " * 120, "", "a photo of a {}."]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(oc["model"].encode_text(oc["tokenizer"](texts)), dim=-1)
    assert torch.allclose(encode_texts(model, texts, batch_size=2), ref, atol=1e-5)


def test_cpu_folder_loader_workers_idle_only_when_one_rank_computes(oc, folder):
    """Zero-shot decoding on the CPU yields to the model (SCHED_IDLE workers, mmfm.data.workers); when several
    ranks share the machine (eval during distributed training) workers keep normal priority, since a starved
    worker would stall the other ranks at the next collective."""
    import mmfm
    from mmfm.eval.zeroshot.classify import folder_loader
    from mmfm.eval.zeroshot.folder import scan_folder
    model = mmfm.load(oc["spec"], device="cpu")
    spec = scan_folder(str(folder))
    one, _ = folder_loader(model, spec, batch_size=4, workers=1)
    assert one.worker_init_fn is not None and one.worker_init_fn.args == ("idle",)
    two, _ = folder_loader(model, spec, batch_size=4, workers=1, world=2)
    assert two.worker_init_fn is None
