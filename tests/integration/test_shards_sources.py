"""Every source type and every recipe in data_recipes/ builds its tiny fixture into readable shards."""
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmfm.config import ConfigError
from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.recipes import resolve_options

RECIPES = Path(__file__).resolve().parents[2] / "data_recipes"


def _samples(folder):
    m = read_manifest(folder)
    return m, [s for sh in m["shards"] for s in iter_samples(Path(folder) / sh["name"])]


def _build(tmp_path, recipe=None, sets=(), flags=None, out="out"):
    opts = resolve_options(recipe, ["workers=0", *sets], flags)
    return build(opts, tmp_path / out, progress=False)


def test_every_recipe_has_readme_with_source_and_license():
    names = sorted(p.parent.name for p in RECIPES.glob("*/recipe.yaml"))
    assert names == ["coco_captions", "coco_karpathy", "country_flags", "csv_pairs", "fashion_mnist", "flickr30k",
                     "icon_theme", "image_folder", "noto_emoji", "openclipart", "openmoji", "skimage_photos", "twemoji",
                     "vizwiz_captions", "vqa"]
    for n in names:
        text = (RECIPES / n / "README.md").read_text().lower()
        assert "source" in text and "license" in text, n


def test_image_folder_recipe(tmp_path):
    _build(tmp_path, "image_folder", ["image.size=32"])
    m, samples = _samples(tmp_path / "out")
    assert m["classes"] == ["blue_square", "red_circle"] and m["total_samples"] == 6
    assert m["keys"] == {"cls": "label", "jpg": "image", "json": "metadata", "txt": "caption"}
    by_cls = {int(s["cls"]): s["txt"].decode() for s in samples}
    assert by_cls == {0: "a photo of a blue square.", 1: "a photo of a red circle."}
    assert min(Image.open(io.BytesIO(samples[0]["jpg"])).size) == 32


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_table_formats_give_the_same_samples(tmp_path, kind):
    src = RECIPES / "csv_pairs" / "fixture"
    shutil.copytree(src / "images", tmp_path / "images")
    rows = list(csv.DictReader(open(src / "pairs.csv")))
    path = tmp_path / f"pairs.{kind}"
    if kind == "tsv":
        path.write_text("url\tcaption\tshape\n" + "".join(f"{r['url']}\t{r['caption']}\t{r['shape']}\n" for r in rows))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        shutil.copy(src / "pairs.csv", path)
    _build(tmp_path, "csv_pairs", ["image.size=24"], {"source": {"path": str(path)}})
    m, samples = _samples(tmp_path / "out")
    assert m["total_samples"] == 4 and m["failures"] == {}
    assert [s["txt"].decode() for s in samples] == [r["caption"] for r in rows]
    assert [json.loads(s["json"])["shape"] for s in samples] == [r["shape"] for r in rows]
    assert "cls" not in samples[0]


def test_table_column_error_names_the_column(tmp_path):
    with pytest.raises(ConfigError, match=r"no column 'caption'.*Did you mean 'captions'"):
        (tmp_path / "t.csv").write_text("image,captions\na.jpg,x\n")
        _build(tmp_path, None, [], {"source": {"path": str(tmp_path / "t.csv")}})


def test_coco_captions_recipe(tmp_path):
    _build(tmp_path, "coco_captions", ["image.size=24"])
    m, samples = _samples(tmp_path / "out")
    assert m["total_samples"] == 3
    meta = [json.loads(s["json"]) for s in samples]
    assert [len(x["captions"]) for x in meta] == [2, 3, 2]
    assert samples[1]["txt"] == b"a blue square." and meta[1]["image_id"] == 2
    assert meta[0]["orig_size"] == [64, 48]


def test_vqa_recipe_list_format(tmp_path):
    _build(tmp_path, "vqa", ["image.size=24"])
    m, samples = _samples(tmp_path / "out")
    assert m["total_samples"] == 3            # two questions share an image: no dedup for VQA
    meta = [json.loads(s["json"]) for s in samples]
    assert meta[0]["question"] == "what color is the circle?" and len(meta[0]["answers"]) == 10
    assert meta[1]["answer_type"] == "yes/no" and samples[2]["txt"] == b"what shape is this?"


def test_vqa_v2_two_file_format(tmp_path):
    (tmp_path / "img").mkdir()
    shutil.copy(RECIPES / "vqa/fixture/images/0.jpg", tmp_path / "img/COCO_val2014_000000000042.jpg")
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"question_id": 7, "image_id": 42, "question": "what is red?"}]}))
    (tmp_path / "a.json").write_text(json.dumps({"data_subtype": "val2014", "annotations": [
        {"question_id": 7, "image_id": 42, "answer_type": "other",
         "answers": [{"answer": "circle", "answer_id": i + 1} for i in range(12)]}]}))
    _build(tmp_path, "vqa", ["image.size=24"], {"source": {"path": str(tmp_path / "a.json"),
           "questions": str(tmp_path / "q.json"), "image_root": str(tmp_path / "img")}})
    _, samples = _samples(tmp_path / "out")
    meta = json.loads(samples[0]["json"])
    assert meta["question"] == "what is red?" and meta["answers"] == ["circle"] * 10 and meta["question_id"] == 7


def test_noto_emoji_fixture_with_holdout(tmp_path):
    fixture = str(RECIPES / "noto_emoji/fixture/emoji-test.txt")
    res = _build(tmp_path, "noto_emoji", ["image.size=32", "holdout=0.3"], {"source": {"path": fixture}})
    train, held = res["train"], res["heldout"]
    assert train["classes"] == held["classes"] and len(train["classes"]) == 9
    assert "Component" not in train["classes"]
    # 31 fully-qualified lines; the skin-toned snowboarder renders like the plain one -> 1 duplicate
    assert train["total_samples"] + held["total_samples"] == 30
    assert train["failures"].get("duplicate", 0) + held["failures"].get("duplicate", 0) == 1
    sides = {}
    for split in ("train", "heldout"):
        _, samples = _samples(tmp_path / "out" / split)
        for s in samples:
            meta = json.loads(s["json"])
            sides.setdefault(meta["base_name"], set()).add(split)
            assert s["txt"].decode() == meta["name"] and int(s["cls"]) == train["classes"].index(meta["group"])
            assert Image.open(io.BytesIO(s["jpg"])).size == (32, 32)
            if meta["name"] == "waving hand: medium skin tone":
                assert meta["skin_tone"] == "medium" and meta["codepoints"] == "1F44B 1F3FD"
            if meta["name"] == "flag: Japan":
                assert meta["is_flag"] and meta["subgroup"] == "country-flag"
    assert all(len(v) == 1 for v in sides.values()), "skin-tone variants were split across train/heldout"
    assert {"train"} in sides.values() and {"heldout"} in sides.values()


def test_twemoji_fixture_has_noto_classes_names_and_skips_missing_images(tmp_path):
    """Another artist's PNGs for the same emoji-test.txt: same classes, cls indices and captions as noto_emoji."""
    fixture = RECIPES / "twemoji" / "fixture"
    _build(tmp_path, "twemoji", [], {"source": {"path": str(fixture / "emoji-test.txt"),
                                                "image_root": str(fixture / "emoji-datasource-twitter")}})
    m, samples = _samples(tmp_path / "out")
    _build(tmp_path, "noto_emoji", ["image.size=32", "holdout=0"], {"source": {"path": str(fixture / "emoji-test.txt")}},
           out="noto")
    assert m["classes"] == read_manifest(tmp_path / "noto")["classes"] and len(m["classes"]) == 9
    assert m["total_samples"] == 30 and m["failures"] == {"missing_image": 1}   # light bulb has no PNG
    fail = json.loads((tmp_path / "out" / "failures.jsonl").read_text().splitlines()[0])
    assert fail["reason"] == "missing_image" and fail["source"] == "emoji:1F4A1"
    _, noto_samples = _samples(tmp_path / "noto")
    noto_cls = {s["txt"].decode(): int(s["cls"]) for s in noto_samples}
    for s in samples:
        meta = json.loads(s["json"])
        assert s["txt"].decode() == meta["name"] and int(s["cls"]) == noto_cls.get(meta["name"], int(s["cls"]))
        assert meta["image"].endswith(".png") and Image.open(io.BytesIO(s["jpg"])).size == (64, 64)
    assert {json.loads(s["json"])["name"] for s in samples} >= {"waving hand: dark skin tone", "flag: England",
                                                                "smiling face", "rocket"}
    home_cache = resolve_options("twemoji").source.image_root       # '~' in a recipe is the user's home
    assert home_cache == str(Path.home() / ".cache/mmfm/emoji-datasource-twitter-16.0.0")
    with pytest.raises(ConfigError, match=r"source.image_root: .* has no emoji.json .*make twemoji"):
        _build(tmp_path, "twemoji", [], {"source": {"path": str(fixture / "emoji-test.txt"),
                                                    "image_root": str(tmp_path)}}, out="none")


def test_recipe_unknown_key_names_the_closest(tmp_path):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("source:\n  type: csv\n  caption_colum: text\n")
    with pytest.raises(ConfigError, match="source.caption_colum.*caption_column"):
        resolve_options(str(bad))


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    _build(tmp_path, "image_folder", ["image.size=16"])
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        _build(tmp_path, "image_folder", ["image.size=16"])
    with pytest.raises(ConfigError, match="image.size: 16 -> 24"):
        build(resolve_options("image_folder", ["workers=0", "image.size=24"]), tmp_path / "out", resume=True,
              progress=False)
    m = build(resolve_options("image_folder", ["workers=0", "image.size=24"]), tmp_path / "out", overwrite=True,
              progress=False)[""]
    assert m["total_samples"] == 6 and m["args"]["image"]["size"] == 24


def test_resume_refuses_folders_it_did_not_build(tmp_path):
    from mmfm.data.shards import write_shards
    write_shards([{"__key__": "a", "txt": "x"}], tmp_path / "out")
    with pytest.raises(ConfigError, match="not written by `mmfm shards build`"):
        build(resolve_options("image_folder", ["workers=0"]), tmp_path / "out", resume=True, progress=False)
    assert (tmp_path / "out" / "shard-000000.tar").is_file()      # nothing was deleted
