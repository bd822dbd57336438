"""Image-folder scanning, class names, templates and the max-pixels decode guard (no model needed)."""
import json

import pytest
from PIL import Image

from mmfm.config import ConfigError
from mmfm.data.decode import decode_image
from mmfm.eval.zeroshot.folder import (FolderDataset, collate_skipping, read_classnames, scan_folder,
                              tidy_classname)
from mmfm.eval.zeroshot.templates import build_prompts, builtin_names, load_templates


def _img(path, size=(16, 12), color=(200, 10, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for cls in ("golden_retriever", "tabby_cat", "zebra"):
        for i in range(2):
            _img(root / cls / f"{i}.jpg")
    _img(root / "zebra" / "nested" / "deep.png")
    (root / "zebra" / "notes.txt").write_text("not an image")
    (root / "tabby_cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / ".hidden").mkdir()
    (root / "README.md").write_text("hi")
    return root


def test_scan_class_folders_sorted_tidied_and_skips_listed(folder):
    spec = scan_folder(folder)
    assert spec.labelled and spec.classes == ["golden_retriever", "tabby_cat", "zebra"]
    assert spec.classnames == ["golden retriever", "tabby cat", "zebra"]
    assert len(spec) == 8 and spec.targets.count(2) == 3          # nested image belongs to its class
    assert "zebra/nested/deep.png" in spec.paths
    skipped = {s["path"]: s["reason"] for s in spec.skipped}
    assert set(skipped) == {"README.md", "zebra/notes.txt"}       # hidden folder ignored


def test_corrupt_image_is_skipped_with_reason_at_load_time(folder):
    spec = scan_folder(folder)
    ds = FolderDataset(spec, transform=lambda im: __import__("torch").zeros(3, 4, 4))
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    failed = {spec.paths[i]: r for i, r in batch["failed"]}
    assert list(failed) == ["tabby_cat/broken.jpg"]
    assert batch["image"].shape == (7, 3, 4, 4) and len(batch["index"]) == 7


def test_classnames_file_txt_json_and_mismatch(folder, tmp_path):
    txt = tmp_path / "names.txt"
    txt.write_text("dog\ncat\n# comment\nstriped horse\n")
    assert scan_folder(folder, classnames_file=txt).classnames == ["dog", "cat", "striped horse"]
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"zebra": "z", "tabby_cat": "c", "golden_retriever": "d"}))
    assert read_classnames(js, ["golden_retriever", "tabby_cat", "zebra"]) == ["d", "c", "z"]
    bad = tmp_path / "two.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"two.txt has 2 names but the folder has 3"):
        scan_folder(folder, classnames_file=bad)
    with pytest.raises(ConfigError, match="classnames file not found"):
        scan_folder(folder, classnames_file=tmp_path / "nope.txt")


def test_bad_folders_give_errors_naming_the_thing(tmp_path):
    with pytest.raises(ConfigError, match="image folder not found: .*missing"):
        scan_folder(tmp_path / "missing")
    empty = tmp_path / "e"
    _img(empty / "cat" / "a.jpg")
    (empty / "dog").mkdir()
    (empty / "dog" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="class folder 'dog' .* holds no images"):
        scan_folder(empty)
    single = tmp_path / "s"
    _img(single / "cat" / "a.jpg")
    with pytest.raises(ConfigError, match="single class folder \\('cat'\\)"):
        scan_folder(single)


def test_flat_folder_needs_labels_and_gives_unlabelled_spec(tmp_path):
    flat = tmp_path / "flat"
    _img(flat / "a.jpg")
    _img(flat / "b.png")
    with pytest.raises(ConfigError, match="flat folder .* --labels"):
        scan_folder(flat)
    spec = scan_folder(flat, labels="red_car, blue car")
    assert not spec.labelled and spec.targets == [-1, -1]
    assert spec.classes == ["red_car", "blue car"] and spec.classnames == ["red car", "blue car"]
    with pytest.raises(ConfigError, match="at least 2"):
        scan_folder(flat, labels="cat")
    with pytest.raises(ConfigError, match="duplicate"):
        scan_folder(flat, labels="cat,cat")


def test_max_samples_keeps_every_class(folder):
    spec = scan_folder(folder, max_samples=4)
    assert len(spec) == 4 and len(set(spec.targets)) == 3


def test_decode_guard_large_jpeg_decodes_reduced_and_other_formats_refused(tmp_path):
    big = _img(tmp_path / "big.jpg", size=(2400, 1600))
    img = decode_image(str(big), max_pixels=1_000_000)
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= 1_000_000 and img.size == (1200, 800)  # 1/2 DCT scale is enough
    assert decode_image(str(big)).size == (2400, 1600)              # under the default limit: full size
    png = _img(tmp_path / "big.png", size=(1200, 1000))
    with pytest.raises(ValueError, match="exceeds max_pixels=1000000"):
        decode_image(str(png), max_pixels=1_000_000)
    # PIL's own global bomb limit is restored afterwards
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_templates_builtin_file_and_errors(tmp_path):
    name, t80 = load_templates("openai")
    assert len(t80) == 80 and t80[0] == "a bad photo of a {}."
    assert load_templates("simple")[1] == ["a photo of a {}."]
    assert {"openai", "simple", "openai-simple"} <= set(builtin_names())
    f = tmp_path / "t.txt"
    f.write_text("# mine\nitap of a {}.\na {c} in the wild.\n")
    assert load_templates(str(f))[1] == ["itap of a {}.", "a {c} in the wild."]
    assert build_prompts(["cat", "dog"], load_templates(str(f))[1]) == [
        "itap of a cat.", "a cat in the wild.", "itap of a dog.", "a dog in the wild."]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo\n")
    with pytest.raises(ConfigError, match="entry 1 .* no '\\{\\}' placeholder"):
        load_templates(str(bad))
    with pytest.raises(ConfigError, match="Did you mean 'openai'"):
        load_templates("opneai")
    assert load_templates("an emoji of {}") == ("custom", ["an emoji of {}"])   # one literal template
    assert load_templates("{}") == ("custom", ["{}"])


def test_tidy_classname():
    assert tidy_classname("  great_white__shark ") == "great white shark"


def test_fast_decode_draft_keeps_short_side_and_is_opt_in(tmp_path):
    big = _img(tmp_path / "p.jpg", size=(1000, 760))
    assert decode_image(str(big)).size == (1000, 760)
    assert decode_image(str(big), draft_size=224).size == (500, 380)   # 1/2 scale; 1/4 would go below 224
    assert decode_image(str(big), draft_size=400).size == (1000, 760)  # short side < 2x: full decode


def test_uint8_worker_transform_plus_device_normalize_is_bit_identical():
    import torch
    from timm.data import create_transform

    from mmfm.data.transforms import build_transform
    from mmfm.eval.embedding import split_transform
    pre = {"input_size": (3, 32, 32), "crop_pct": 0.9, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    reference = create_transform(32, is_training=False, crop_pct=0.9, interpolation="bicubic",
                                 mean=pre["mean"], std=pre["std"])      # timm: ToTensor + Normalize
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(50, 70, 3, generator=g) * 255).byte().numpy())
    for tf in (build_transform(pre, train=False), reference):
        worker, finish = split_transform(tf, "cuda")          # the CUDA split, evaluated here on CPU tensors
        assert finish is not None and worker(img).dtype == torch.uint8
        assert torch.equal(finish(worker(img)[None])[0], reference(img))
        assert split_transform(tf, "cpu") == (tf, None)


def test_concurrent_decodes_leave_pil_bomb_limit_in_place(tmp_path):
    """Threads (loader, service pool) decoding at once must not leave PIL's global limit switched off."""
    from concurrent.futures import ThreadPoolExecutor
    paths = [str(_img(tmp_path / f"i{i}.jpg", size=(64 + i, 48))) for i in range(8)]
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda p: decode_image(p).size, paths * 50))
    assert len(sizes) == 400
    assert Image.MAX_IMAGE_PIXELS == before == 89_478_485


def test_full_class_list_keeps_missing_and_empty_class_folders(tmp_path):
    """Issue 14: an evaluation set (a few photos) holds images of some classes only, and is still classified
    over all of them: ``classes=`` fixes the candidates and their order; an empty or absent folder is allowed,
    an unknown one is an error naming it."""
    root = tmp_path / "photos"
    _img(root / "cat" / "a.jpg")
    _img(root / "rocket" / "b.jpg")
    (root / "dog").mkdir()
    spec = scan_folder(root, classes=["rocket", "dog", "cat", "flag"])
    assert spec.labelled and spec.classes == ["rocket", "dog", "cat", "flag"]
    assert sorted(zip(spec.paths, spec.targets)) == [("cat/a.jpg", 2), ("rocket/b.jpg", 0)]
    names = tmp_path / "names.txt"
    names.write_text("a rocket\na dog\na cat\na flag\n")
    assert scan_folder(root, classes=["rocket", "dog", "cat", "flag"], classnames_file=names).classnames[3] == "a flag"
    with pytest.raises(ConfigError, match="class folder\\(s\\) rocket are not among the classes"):
        scan_folder(root, classes=["cat", "dog"])


def test_a_literal_template_longer_than_a_file_name_is_a_template():
    # Path(spec).is_file() raises OSError (File name too long) for a string past NAME_MAX: the literal is a template
    long = "a detailed drawing of {}, " + "with many words " * 40 + "in the style of an emoji."
    from mmfm.eval.zeroshot.templates import load_templates
    assert load_templates(long) == ("custom", [long])
