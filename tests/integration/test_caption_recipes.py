"""Shards from the caption formats accessibility users hold, each from a tiny fixture in the real format:
VizWiz-Captions (annotations JSON; is_rejected / is_precanned / text_detected kept), COCO in Karpathy's split
file (dataset_coco.json) and Flickr30k (dataset_flickr30k.json)."""
import json
from pathlib import Path

import pytest

from mmfm.config import ConfigError
from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.recipes import resolve_options

RECIPES = Path(__file__).resolve().parents[2] / "data_recipes"


def _build(tmp_path, recipe, sets=(), flags=None):
    build(resolve_options(recipe, ["workers=0", "image.size=24", *sets], flags), tmp_path / "out", progress=False)
    m = read_manifest(tmp_path / "out")
    samples = [s for sh in m["shards"] for s in iter_samples(tmp_path / "out" / sh["name"])]
    return m, samples, [json.loads(s["json"]) for s in samples]


def test_vizwiz_captions_keep_the_quality_flags(tmp_path):
    m, samples, meta = _build(tmp_path, "vizwiz_captions")
    assert m["total_samples"] == 2                      # the test-split image has no caption: skipped, counted
    by_id = {x["image_id"]: (s, x) for s, x in zip(samples, meta)}
    s0, x0 = by_id[0]
    assert s0["txt"] == b"A red round label on a white box with printed text."      # usable first, not pre-canned
    assert x0["captions"][1:] == ["Quality issues are too severe to recognize visual content.", "a red circle"]
    assert x0["caption_flags"] == [{"is_rejected": False, "is_precanned": False},
                                   {"is_rejected": False, "is_precanned": True},
                                   {"is_rejected": True, "is_precanned": False}]
    assert x0["text_detected"] is True and by_id[1][1]["text_detected"] is False
    assert len(by_id[1][1]["captions"]) == 2 and by_id[1][1]["caption_flags"][0]["is_rejected"] is False
    assert 2 not in by_id


def test_vizwiz_json_is_detected_without_a_recipe(tmp_path):
    fixture = RECIPES / "vizwiz_captions" / "fixture"
    _, _, meta = _build(tmp_path, None, [f"source.path={fixture / 'annotations.json'}",
                                         f"source.image_root={fixture / 'images'}"])
    assert all("caption_flags" in x for x in meta)


def test_coco_karpathy_split_file_and_one_split(tmp_path):
    m, samples, meta = _build(tmp_path, "coco_karpathy")
    assert m["total_samples"] == 4
    by = {x["cocoid"]: (s, x) for s, x in zip(samples, meta)}
    assert by[391895][1]["karpathy_split"] == "test" and by[391895][0]["txt"] == b"A red circle on a grey background."
    assert by[391895][1]["captions"] == ["A red circle on a grey background.", "a round red shape"]
    assert by[9][1]["source"] == "train2014/COCO_train2014_000000000009.jpg"
    _, _, train = _build(tmp_path / "t", "coco_karpathy", ["source.karpathy_split=train+restval"])
    assert sorted(x["karpathy_split"] for x in train) == ["restval", "train"]
    with pytest.raises(ConfigError, match="karpathy_split.*'tset'.*restval, test, train, val"):
        _build(tmp_path / "bad", "coco_karpathy", ["source.karpathy_split=tset"])


def test_flickr30k_karpathy_file(tmp_path):
    m, samples, meta = _build(tmp_path, "flickr30k")
    assert m["total_samples"] == 3
    by = {x["imgid"]: (s, x) for s, x in zip(samples, meta)}
    assert by[0][0]["txt"] == b"A red circle drawn on a grey card." and len(by[0][1]["captions"]) == 2
    assert [by[i][1]["karpathy_split"] for i in range(3)] == ["train", "val", "test"]
    assert "cocoid" not in by[1][1] and by[2][1]["source"] == "1000268201.jpg"
