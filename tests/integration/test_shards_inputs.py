"""img2dataset habits of `mmfm shards build`, against real files and a real HTTP server on 127.0.0.1: the
X-Robots-Tag opt-out, a per-host download limit, tables split over many (gzip) files, --retry-failures."""
import json

import pytest

from mmfm.data.shards.build import build
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F

pytestmark = pytest.mark.timeout(90)
PRIVATE = "download.allow_private_urls=true"   # the server is on 127.0.0.1


def _table(tmp_path, urls, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"image": u, "caption": f"row {i}"}) + "\n" for i, u in enumerate(urls)))
    return path


def _build(input_path, out, *sets):
    opts = resolve_options(None, ["workers=0", "image.size=16", "download.retries=0", PRIVATE, *sets],
                           {"source": {"path": str(input_path)}})
    return build(opts, out, progress=False)[""]


def test_x_robots_tag_opt_out_is_honoured_by_default(tmp_path):
    names = ["plain", "noai", "noimageai", "other_bot", "our_bot", "noindex", "two_headers"]
    images = {n: F.photo(20, 16, seed=i) for i, n in enumerate(names)}
    robots = {"noai": ["noai"], "noimageai": ["nofollow, NoImageAI"], "other_bot": ["otherbot: noai"],
              "our_bot": ["mmfm: noai"], "noindex": ["noindex"], "two_headers": ["nofollow", "noai"]}
    with F.FaultServer(images, robots=robots) as server:
        table = _table(tmp_path, [f"{server.url}/robots/{n}" for n in names])
        m = _build(table, tmp_path / "out")
        assert m["failures"] == {"opted_out": 4} and m["total_samples"] == 3
        failed = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
        assert [(f["source"].rsplit("/", 1)[1], f["detail"]) for f in failed] == [
            ("noai", "X-Robots-Tag: noai"), ("noimageai", "X-Robots-Tag: nofollow, NoImageAI"),
            ("our_bot", "X-Robots-Tag: mmfm: noai"), ("two_headers", "X-Robots-Tag: noai")]
        m = _build(table, tmp_path / "all", "download.disallowed_header_directives=[]")
        assert m["failures"] == {} and m["total_samples"] == len(names)


@pytest.mark.timeout(120)
def test_per_host_limit_holds_over_all_workers(tmp_path):
    images = {f"{i}.jpg": F.photo(20, 16, seed=i) for i in range(64)}
    with F.FaultServer(images, delay=0.1) as server:
        table = _table(tmp_path, [f"{server.url}/img/{i}.jpg" for i in range(64)])
        m = _build(table, tmp_path / "limited", "workers=2", "download.threads=4", "download.per_host=2")
        assert m["total_samples"] == 64 and m["failures"] == {}
        assert max(server.peak.values()) == 2, server.peak
        server.peak.clear()
        m = _build(table, tmp_path / "free", "download.threads=4")
        assert m["total_samples"] == 64 and max(server.peak.values()) > 2, server.peak


def _write_parts(folder, rows):
    """rows 0-1: Parquet, 2-3: CSV.gz, 4-5: JSONL.gz, 6-7: TSV.gz; plus files that are not tables."""
    import gzip
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [r[0] for r in rows[:2]], "caption": [r[1] for r in rows[:2]]}), buf)
    files = {"part-0.parquet": buf.getvalue(),
             "part-1.csv.gz": gzip.compress(("image,caption\n" + "".join(f"{a},{b}\n" for a, b in rows[2:4])).encode()),
             "part-2.jsonl.gz": gzip.compress("".join(json.dumps({"image": a, "caption": b}) + "\n"
                                                      for a, b in rows[4:6]).encode()),
             "part-3.tsv.gz": gzip.compress(("image\tcaption\n" + "".join(f"{a}\t{b}\n" for a, b in rows[6:]))
                                            .encode()),
             "README.txt": b"not a table", "notes.json": b"{}"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _captions(out):
    from mmfm.data.shards.inspect import iter_samples

    return [s["txt"].decode() for p in sorted(out.glob("shard-*.tar")) for s in iter_samples(p)]


def test_folder_glob_and_prefix_of_gzip_and_parquet_tables(tmp_path):
    rows = []
    for i in range(8):
        img = tmp_path / "images" / f"{i}.jpg"
        img.parent.mkdir(exist_ok=True)
        img.write_bytes(F.photo(20, 16, seed=i))
        rows.append((str(img), f"row {i}"))
    files = _write_parts(tmp_path / "tables", rows)
    (tmp_path / "tables" / "sub").mkdir()       # a subfolder does not make it an image folder

    m = _build(tmp_path / "tables", tmp_path / "out")
    assert m["total_samples"] == 8 and m["failures"] == {}
    assert _captions(tmp_path / "out") == [f"row {i}" for i in range(8)]     # file order, then row order
    m = _build(str(tmp_path / "tables" / "part-*.*.gz"), tmp_path / "glob")
    assert _captions(tmp_path / "glob") == [f"row {i}" for i in range(2, 8)]
    _build(tmp_path / "tables" / "part-2.jsonl.gz", tmp_path / "one")
    assert _captions(tmp_path / "one") == ["row 4", "row 5"]

    import fsspec

    memory = fsspec.filesystem("memory")
    for name, data in files.items():
        memory.pipe_file(f"/i15m-tables/{name}", data)
    try:
        remote = _build("memory://i15m-tables", tmp_path / "remote")
    finally:
        memory.rm("/i15m-tables", recursive=True)
    local = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]


def test_glob_or_prefix_without_tables_is_a_clear_error(tmp_path):
    from mmfm.config import ConfigError

    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"source.path: .*\*.parquet matches no table files"):
        _build(str(tmp_path / "*.parquet"), tmp_path / "out")
    both = tmp_path / "both"
    (both / "cat").mkdir(parents=True)
    (both / "cat" / "a.jpg").write_bytes(F.photo(seed=1))
    (both / "rows.csv").write_text(f"image,caption\n{both / 'cat' / 'a.jpg'},a cat\n")
    with pytest.raises(ConfigError, match=r"holds table files \(rows.csv, ...\) and class folders of images; "
                                          r"say which it is: --type image_folder, or --type csv"):
        _build(both, tmp_path / "out")
    assert _build(both, tmp_path / "as_folder", "source.type=image_folder")["total_samples"] == 1
    assert _build(both, tmp_path / "as_table", "source.type=csv")["total_samples"] == 1


def test_retry_failures_downloads_only_what_failed_under_the_same_keys(tmp_path):
    from mmfm.config import ConfigError
    from mmfm.data.shards.inspect import iter_samples

    photos = {f"{i}.jpg": F.photo(20, 16, seed=i) for i in range(8)}
    with F.FaultServer({k: v for k, v in photos.items() if k not in ("2.jpg", "5.jpg", "6.jpg")}) as server:
        urls = [f"{server.url}/img/{i}.jpg" for i in range(8)] + [f"{server.url}/img/0.jpg", f"{server.url}/500"]
        table = _table(tmp_path, urls)
        rows = table.read_text().splitlines()
        rows[3] = json.dumps({"image": f"{server.url}/img/3.jpg", "caption": None})   # a row problem
        table.write_text("\n".join(rows) + "\n")
        first = _build(table, tmp_path / "first")
        assert first["failures"] == {"http_404": 3, "duplicate": 1, "missing_caption": 1, "http_5xx": 1}

        server.images.update({"2.jpg": photos["2.jpg"], "5.jpg": photos["5.jpg"], "6.jpg": photos["1.jpg"]})
        server.hits.clear()
        again = _build(table, tmp_path / "again", f"retry_failures={tmp_path / 'first'}")
        assert sorted(server.hits) == ["/500", "/img/2.jpg", "/img/5.jpg", "/img/6.jpg"]   # only what failed
        # 6.jpg now serves the bytes of 1.jpg, which the first build holds: still a duplicate
        assert again["failures"] == {"duplicate": 1, "http_5xx": 1} and again["total_samples"] == 2
        keys = [s["__key__"] for sh in again["shards"] for s in iter_samples(tmp_path / "again" / sh["name"])]
        assert keys == ["000000002", "000000005"]                      # the keys of the first build's rows
        failed = [json.loads(x)["index"] for x in (tmp_path / "again" / "failures.jsonl").read_text().splitlines()]
        assert failed == [6, 9]
        other = tmp_path / "other.jsonl"
        other.write_text(table.read_text())
        with pytest.raises(ConfigError, match=r"--retry-failures: .* was built from source.path=.*same input"):
            _build(other, tmp_path / "bad", f"retry_failures={tmp_path / 'first'}")


@pytest.mark.parametrize("flag, sets", [("--retry-failures", ["retry_failures=prev"]),
                                        ("--per-host", ["download.per_host=2"])])
def test_ray_refuses_what_it_cannot_honour_before_writing(tmp_path, flag, sets):
    """--retry-failures and --per-host work on the one-machine build; a Ray build would silently ignore them
    (its workers share no host slots and read no previous failures), so it refuses them, before --out exists."""
    from mmfm.config import ConfigError
    table = _table(tmp_path, ["http://127.0.0.1:9/a.png"])
    with pytest.raises(ConfigError, match=f"{flag} is not supported with --distributor ray"):
        _build(table, tmp_path / "out", "distributor.kind=ray", *sets)
    assert not (tmp_path / "out").exists()
