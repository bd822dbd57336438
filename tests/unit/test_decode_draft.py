"""JPEG DCT-domain downscaling in the one decoder (mmfm.data.decode.decode_image): used for big JPEGs, close to
a full decode + resize, and a no-op for PNGs and small JPEGs."""
import numpy as np
from PIL import Image

from mmfm.data.decode import decode_image
from mmfm.data.transforms import build_transform, decode_size
from tests.fixtures.shards import factory as F


def _pixels(img, short_side):
    w, h = img.size
    size = (round(w * short_side / min(w, h)), round(h * short_side / min(w, h)))
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)


def test_big_jpeg_is_drafted_and_stays_close_to_a_full_decode():
    data = F.photo(800, 600, seed=3)
    drafted, full = decode_image(data, draft_size=100), decode_image(data)
    assert full.size == (800, 600)
    assert drafted.size == (200, 150)        # 1/4 DCT scale: the strongest that keeps both sides >= 100
    a, b = _pixels(drafted, 100), _pixels(full, 100)
    assert a.shape == b.shape == (100, 133, 3) and np.abs(a - b).mean() < 1.5


def test_png_and_small_jpeg_are_decoded_unchanged():
    for data in (F.photo(800, 600, seed=4, fmt="PNG"), F.photo(190, 150, seed=5)):
        drafted, full = decode_image(data, draft_size=100), decode_image(data)
        assert drafted.size == full.size and np.array_equal(np.asarray(drafted), np.asarray(full))


def test_train_decode_size_keeps_what_the_random_crop_needs():
    pre = {"input_size": 64}
    side = decode_size(pre, train=True)
    assert side >= 64
    img = decode_image(F.photo(1024, 768, seed=6), draft_size=side)
    assert min(img.size) >= side and min(img.size) < 768
    assert tuple(build_transform(pre, True)(img).shape) == (3, 64, 64)
