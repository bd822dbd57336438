"""Every bad input of issue 2 is skipped, counted by its reason in manifest.json, and logged in
failures.jsonl; good and convertible inputs become correct samples. One real build (local files + a
real HTTP server on 127.0.0.1) is shared by the tests; each bad input has its own test."""
import io
import json

import pytest
from PIL import Image

from mmfm.data.shards.build import build
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F

pytestmark = pytest.mark.timeout(120)

GOOD = F.photo(64, 48, seed=1)
REMOTE = {"remote.jpg": F.photo(80, 60, seed=9), "redirected.jpg": F.photo(50, 40, seed=10)}
ROWS = [  # (name, image file or URL path, caption (bytes = raw line text), expected reason or None)
    ("good", "good.jpg", "a good photo", None),
    ("zero_byte", "zero.jpg", "zero bytes", "empty_file"),
    ("truncated_jpeg", "truncated.jpg", "half a jpeg", "truncated_image"),
    ("text_named_jpg", "text.jpg", "a text file", "not_an_image"),
    ("decompression_bomb", "bomb.png", "a bomb", "too_many_pixels"),
    ("cmyk_jpeg", "cmyk.jpg", "a cmyk jpeg", None),
    ("png_16bit", "gray16.png", "a 16-bit ramp", None),
    ("palette_alpha", "palette.png", "a palette png with transparency", None),
    ("exif_rotated", "exif.jpg", "an exif rotated photo", None),
    ("missing_caption", "good_b.jpg", None, "missing_caption"),
    ("empty_caption", "good_c.jpg", "   ", "empty_caption"),
    ("non_utf8_caption", "good_d.jpg", b"caf\xe9 au lait", "caption_not_utf8"),
    ("duplicate", "good_copy.jpg", "the same bytes again", "duplicate"),
    ("nonexistent_path", "nope/missing.jpg", "not there", "file_not_found"),
    ("url_timeout", "URL/slow", "slow server", "timeout"),
    ("url_404", "URL/404", "gone", "http_404"),
    ("url_500", "URL/500", "server error", "http_5xx"),
    ("url_redirect_loop", "URL/loop", "loops", "redirect_loop"),
    ("url_html", "URL/html", "a web page", "not_an_image"),
    ("url_html_as_jpeg", "URL/html-as-jpeg", "a web page that says it is a jpeg", "not_an_image"),
    ("url_too_large", "URL/big", "too big", "too_large"),
    ("url_too_large_stream", "URL/big-stream", "too big, no length", "too_large"),
    ("url_good", "URL/img/remote.jpg", "a downloaded photo", None),
    ("url_redirect_ok", "URL/redirect-ok", "a redirected photo", None),
]
EXPECTED = {name: reason for name, _, _, reason in ROWS}
OPTS = ["image.size=32", "image.resize_mode=keep_ratio", "image.format=png", "shard_size=4",
        "download.timeout=0.4", "download.retries=1", "download.backoff=0.05", "download.max_bytes=200000",
        "download.allow_private_urls=true", "source.allow_local_files=true"]   # the server is on 127.0.0.1


def _write_inputs(root, url):
    files = {"good.jpg": GOOD, "zero.jpg": b"", "truncated.jpg": F.truncated_jpeg(),
             "text.jpg": b"this is not an image\n" * 10, "bomb.png": F.png_bomb(), "cmyk.jpg": F.cmyk_jpeg(),
             "gray16.png": F.gray16_png(), "palette.png": F.palette_alpha_png(), "exif.jpg": F.exif_rotated_jpeg(),
             "good_b.jpg": F.photo(seed=2), "good_c.jpg": F.photo(seed=3), "good_d.jpg": F.photo(seed=4),
             "good_copy.jpg": GOOD}
    (root / "img").mkdir()
    for name, data in files.items():
        (root / "img" / name).write_bytes(data)
    lines = []
    for name, image, caption, _ in ROWS:
        image = image.replace("URL", url) if image.startswith("URL") else f"img/{image}"
        row = {"image": image, "name": name}
        if isinstance(caption, bytes):
            lines.append(json.dumps(row)[:-1].encode() + b', "caption": "' + caption + b'"}')
            continue
        if caption is not None:
            row["caption"] = caption
        lines.append(json.dumps(row).encode())
    (root / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root / "rows.jsonl"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    with F.FaultServer(REMOTE) as server:
        table = _write_inputs(root, server.url)
        opts = resolve_options(None, OPTS + ["workers=0", "source.extra_columns=[name]"],
                               {"source": {"path": str(table)}})
        manifest = build(opts, root / "out", progress=False)[""]
        hits = dict(server.hits)
    failed = {json.loads(line)["index"]: json.loads(line)
              for line in (root / "out" / "failures.jsonl").read_text().splitlines()}
    samples = {}
    for s in manifest["shards"]:
        for sample in iter_samples(root / "out" / s["name"]):
            meta = json.loads(sample["json"])
            samples[meta["name"]] = {"meta": meta, "img": Image.open(io.BytesIO(sample["png"])), "raw": sample}
    return {"root": root, "manifest": manifest, "failed": failed, "samples": samples, "hits": hits, "table": table}


def _check_skipped(built, name):
    index = [r[0] for r in ROWS].index(name)
    reason = EXPECTED[name]
    assert name not in built["samples"], f"{name} should have been skipped"
    assert built["failed"][index]["reason"] == reason, built["failed"].get(index)
    expected_count = sum(1 for r in EXPECTED.values() if r == reason)
    assert built["manifest"]["failures"][reason] == expected_count


def test_counts_add_up(built):
    m = built["manifest"]
    n_bad = sum(1 for r in EXPECTED.values() if r)
    assert m["total_samples"] == len(ROWS) - n_bad
    assert sum(m["failures"].values()) == n_bad == len(built["failed"])
    assert sorted(built["samples"]) == sorted(k for k, r in EXPECTED.items() if r is None)


@pytest.mark.parametrize("name", [n for n, r in EXPECTED.items() if r])
def test_bad_input_is_skipped_and_counted(built, name):
    _check_skipped(built, name)


def test_good_photo_is_resized_and_keyed(built):
    s = built["samples"]["good"]
    assert s["raw"]["__key__"] == "000000000" and s["img"].size == (43, 32)
    assert s["meta"]["orig_size"] == [64, 48] and s["meta"]["captions"] == ["a good photo"]
    assert s["raw"]["txt"] == b"a good photo"


def test_cmyk_jpeg_becomes_rgb_red(built):
    img = built["samples"]["cmyk_jpeg"]["img"]
    assert img.mode == "RGB"
    r, g, b = img.getpixel((img.width // 2, img.height // 2))
    assert r > 180 and g < 70 and b < 70


def test_16bit_png_keeps_its_ramp(built):
    img = built["samples"]["png_16bit"]["img"].convert("L")
    row = [img.getpixel((x, img.height // 2)) for x in range(img.width)]
    assert row[0] < 20 and row[-1] > 235 and 90 < row[len(row) // 2] < 165   # not clipped to white


def test_palette_transparency_composited_on_white(built):
    img = built["samples"]["palette_alpha"]["img"]
    assert img.mode == "RGB"
    left, right = img.getpixel((2, img.height // 2)), img.getpixel((img.width - 3, img.height // 2))
    assert min(left) > 245                        # transparent -> white background
    assert right[1] > 180 and right[0] < 40       # opaque palette green stays green


def test_exif_rotation_applied_then_stripped(built):
    s = built["samples"]["exif_rotated"]
    img = s["img"]
    assert img.height > img.width and s["meta"]["orig_size"] == [30, 60]   # stored upright
    top, bottom = img.getpixel((img.width // 2, 3)), img.getpixel((img.width // 2, img.height - 4))
    assert top[0] > 180 and top[2] < 60 and bottom[2] > 180 and bottom[0] < 60
    assert 0x0112 not in img.getexif()


def test_duplicate_keeps_the_first_copy(built):
    import hashlib
    assert built["samples"]["good"]["meta"]["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert built["failed"][12] == {"index": 12, "source": "img/good_copy.jpg", "reason": "duplicate", "detail": ""}


def test_downloads_work_and_retry_only_retryable_errors(built):
    assert built["samples"]["url_good"]["meta"]["orig_size"] == [80, 60]
    assert built["samples"]["url_redirect_ok"]["img"].size[1] == 32
    hits = built["hits"]
    assert hits["/500"] == 2 and hits["/slow"] == 2     # retried once (download.retries=1)
    assert hits["/404"] == 1 and hits["/html"] == 1     # not retried


def test_worker_processes_give_identical_shards(built, tmp_path):
    """workers=2 (real processes, forkserver) writes byte-identical shards in the same order."""
    with F.FaultServer(REMOTE) as server:
        table = _write_inputs(tmp_path, server.url)
        opts = resolve_options(None, OPTS + ["workers=2", "source.extra_columns=[name]"],
                               {"source": {"path": str(table)}})
        m = build(opts, tmp_path / "out", progress=False)[""]
    ref = built["manifest"]
    assert m["failures"] == ref["failures"] and m["total_samples"] == ref["total_samples"]
    # images and keys identical; the JSON differs only by the URL port
    for a, b in zip(m["shards"], ref["shards"]):
        sa = list(iter_samples(tmp_path / "out" / a["name"]))
        sb = list(iter_samples(built["root"] / "out" / b["name"]))
        assert [x["__key__"] for x in sa] == [x["__key__"] for x in sb]
        assert [x["png"] for x in sa] == [x["png"] for x in sb]


def test_non_utf8_caption_in_csv(tmp_path):
    (tmp_path / "a.jpg").write_bytes(F.photo(seed=5))
    (tmp_path / "b.jpg").write_bytes(F.photo(seed=6))
    (tmp_path / "t.csv").write_bytes(b"image,caption\na.jpg,na\xefve latin-1\nb.jpg,fine caption\n")
    opts = resolve_options(None, ["workers=0", "image.size=16"], {"source": {"path": str(tmp_path / "t.csv")}})
    m = build(opts, tmp_path / "out", progress=False)[""]
    assert m["total_samples"] == 1 and m["failures"] == {"caption_not_utf8": 1}
