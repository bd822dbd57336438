"""Image normalisation, resize modes, filters and caption checks of the shard builder."""
import io

import numpy as np
import pytest
from PIL import Image

from mmfm.data.shards.download import fetch
from mmfm.data.shards.imageops import Skip, process_bytes, resize, to_rgb
from mmfm.data.shards.options import DownloadOptions, ImageOptions
from mmfm.data.shards.process import check_text
from tests.fixtures.shards import factory as F


def _opts(**kw):
    return ImageOptions(**kw)


@pytest.mark.parametrize("mode,side,size,expected", [
    ("no", "shortest", 50, (200, 100)),
    ("keep_ratio", "shortest", 50, (100, 50)),
    ("keep_ratio", "longest", 50, (50, 25)),
    ("center_crop", "shortest", 50, (50, 50)),
    ("border", "shortest", 50, (50, 50)),
    ("keep_ratio", "shortest", 100, (200, 100)),
])
def test_resize_modes(mode, side, size, expected):
    img = Image.new("RGB", (200, 100), (10, 200, 10))
    out = resize(img, _opts(size=size, resize_mode=mode, resize_side=side))
    assert out.size == expected
    if mode == "border":   # letterbox bars use the background colour
        assert out.getpixel((25, 2)) == (255, 255, 255) and out.getpixel((25, 25))[1] > 150
    if mode == "center_crop":
        assert out.getpixel((0, 0))[1] > 150


def test_resize_only_if_bigger_keeps_small_images():
    img = Image.new("RGB", (40, 30))
    assert resize(img, _opts(size=64, resize_only_if_bigger=True)).size == (40, 30)
    assert resize(img, _opts(size=64)).size == (85, 64)


def test_jpeg_draft_decode_matches_full_decode():
    data = F.photo(512, 384, seed=7)
    fast, orig = process_bytes(data, _opts(size=96, format="png", draft=True))
    full, _ = process_bytes(data, _opts(size=96, format="png", draft=False))
    a, b = (np.asarray(Image.open(io.BytesIO(x)), dtype=np.float32) for x in (fast, full))
    assert a.shape == b.shape == (96, 128, 3) and orig == (512, 384)
    assert np.abs(a - b).mean() < 4.0


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "1", "I", "F", "CMYK", "P"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (8, 8), (120, 120, 120)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (8, 8)


def test_rgba_composited_on_background():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(img, (0, 0, 255)).getpixel((0, 0)) == (0, 0, 255)
    img.putpixel((1, 1), (255, 0, 0, 255))
    assert to_rgb(img).getpixel((1, 1)) == (255, 0, 0)


@pytest.mark.parametrize("kw,size,reason", [
    ({"min_size": 50}, (40, 300), "too_small"),
    ({"max_size": 100}, (40, 300), "too_big"),
    ({"max_aspect_ratio": 3.0}, (40, 300), "bad_aspect"),
    ({"max_pixels": 10_000}, (200, 200), "too_many_pixels"),
])
def test_size_filters(kw, size, reason):
    data = F.encode(Image.new("RGB", size), "PNG")
    with pytest.raises(Skip) as e:
        process_bytes(data, _opts(**kw))
    assert e.value.reason == reason


@pytest.mark.parametrize("value,reason", [
    (None, "missing_caption"), (float("nan"), "missing_caption"), ("  ", "empty_caption"),
    ("caf\udce9", "caption_not_utf8"), (b"caf\xe9", "caption_not_utf8"), ("ab", "caption_too_short"),
])
def test_caption_checks(value, reason):
    with pytest.raises(Skip) as e:
        check_text(value, 3)
    assert e.value.reason == reason


def test_caption_whitespace_is_normalised():
    assert check_text("  a\tcat \n on  a mat ", 1) == "a cat on a mat"
    assert check_text(b"caf\xc3\xa9", 1) == "café"


def test_fetch_local_and_file_urls_and_bad_schemes(tmp_path):
    p = tmp_path / "a b.jpg"
    p.write_bytes(b"xyz")
    assert fetch(str(p), DownloadOptions()) == b"xyz"
    assert fetch(p.as_uri(), DownloadOptions()) == b"xyz"
    for src, reason in [("ftp://x/y.jpg", "bad_url"), (str(tmp_path / "no.jpg"), "file_not_found"),
                        (str(tmp_path), "not_a_file"), ("http://127.0.0.1:9/x.jpg", "connection_error")]:
        with pytest.raises(Skip) as e:
            fetch(src, DownloadOptions(retries=0, timeout=2, allow_private_urls=True))
        assert e.value.reason == reason, src


def test_redirect_limit(tmp_path):
    with F.FaultServer({"redirected.jpg": F.photo()}) as server:
        local = DownloadOptions(allow_private_urls=True)   # the server is on 127.0.0.1
        assert fetch(f"{server.url}/redirect-ok", local) == server.images["redirected.jpg"]
        with pytest.raises(Skip) as e:
            fetch(f"{server.url}/redirect-ok", DownloadOptions(max_redirects=0, allow_private_urls=True))
        assert e.value.reason == "too_many_redirects"
