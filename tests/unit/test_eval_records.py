"""Where evaluation samples come from (``mmfm.eval.records``): the one "is this shards" rule and the one table
reader; and ``EvalResult``, what every runner returns."""
import io
import json
import uuid

import pytest
from PIL import Image

from mmfm.config import ConfigError
from mmfm.eval.records import is_shard_source, read_rows, shard_records


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (20 * i, 40, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from mmfm.data.shards import write_shards
    root = tmp_path_factory.mktemp("records") / "shards"
    write_shards(({"__key__": f"k{i}", "png": _png(i),
                   "json": {"captions": [f"item {i}"], "tone": "ab"[i % 2]}} for i in range(4)), root, shard_size=2)
    return root


def test_one_shard_source_rule(shards, tmp_path):
    images = tmp_path / "photos" / "cat"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "0.png")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "a.tar").write_bytes((shards / "shard-000000.tar").read_bytes())
    assert is_shard_source(shards) and is_shard_source(bare) and is_shard_source(shards / "shard-000000.tar")
    assert is_shard_source(f"{shards}/shard-{{000000..000001}}.tar") and is_shard_source(f"file://{shards}")
    # where the two old rules disagreed: an image folder is no shard source (``retrieval.is_shard_source`` said it
    # was), a URL folder and a manifest are (``records.is_shards`` said they were not)
    assert not is_shard_source(tmp_path / "photos")
    assert is_shard_source("s3://bucket/shards") and is_shard_source(shards / "manifest.json")
    assert not is_shard_source("s3://bucket/pairs.jsonl") and not is_shard_source(tmp_path / "pairs.csv")
    assert not is_shard_source(tmp_path / "missing")


def test_a_shard_url_and_a_manifest_are_read_as_shards(shards):
    """Bias and caption evaluation read a URL folder and a manifest path (both were refused or misread)."""
    import fsspec

    from mmfm.eval.bias.audit import read_samples
    from mmfm.eval.captioning.data import read_caption_data
    folder = f"/mmfm-records-{uuid.uuid4().hex[:8]}/shards"
    fsspec.filesystem("memory").put(str(shards), folder, recursive=True)
    samples, skipped = read_samples(f"memory://{folder}", "tone")
    assert [s["group"] for s in samples] == ["a", "b", "a", "b"] and skipped == {}
    items = read_caption_data(str(shards / "manifest.json"))
    assert [i["references"] for i in items] == [[f"item {i}"] for i in range(4)]
    assert [r["key"] for r in shard_records(str(shards / "manifest.json"))] == ["k0", "k1", "k2", "k3"]


def test_an_image_folder_is_scored_as_a_folder_and_refused_as_a_table(tmp_path):
    from mmfm.eval.compare.data import data_kind
    from mmfm.eval.retrieval import retrieval_source
    for c in ("cat", "dog"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "photos" / c / "0.png")
    assert data_kind(str(tmp_path / "photos"), "clip") == "folder"
    with pytest.raises(ConfigError, match="photos: a folder with no manifest.json and no .tar shards"):
        retrieval_source(str(tmp_path / "photos"))
    with pytest.raises(ConfigError, match="caption data not found"):
        read_rows(tmp_path / "nope.jsonl", "caption data")


def test_eval_result_summary_and_files(tmp_path):
    from mmfm.eval.result import EvalResult, write_eval
    flat = EvalResult(metrics={"top1": 0.5}, meta={"task": "zeroshot_classification", "n_samples": 2},
                      predictions=[{"path": "a.png"}, {"path": "b.png"}])
    assert flat.task == "zeroshot_classification"
    assert list(flat.summary().items()) == [("top1", 0.5), ("task", "zeroshot_classification"), ("n_samples", 2)]
    nested = EvalResult(metrics={"CIDEr-D": 1.0}, meta={"task": "caption", "samples": 2}, nested=True)
    assert list(nested.summary()) == ["task", "metrics", "samples"] and nested.summary()["metrics"] == {"CIDEr-D": 1.0}
    paths = write_eval(flat, tmp_path / "out")
    assert json.loads(paths["metrics"].read_text()) == flat.summary() and flat.paths == paths
    assert [json.loads(x) for x in paths["predictions"].read_text().splitlines()] == flat.predictions
