"""The real-photo evaluation set: scikit-image's bundled photos, hand-named, as a zero-shot folder by CLDR group."""
import pytest

from mmfm.config import ConfigError
from mmfm.demo.photos import EMOJI_GROUPS, read_photo_list, write_photo_folder
from mmfm.eval.folder import scan_folder


def test_photo_folder_holds_the_hand_named_photos_by_group(tmp_path):
    pytest.importorskip("skimage")
    photos = read_photo_list()
    images, names = write_photo_folder(tmp_path / "photos")
    spec = scan_folder(str(images), classnames_file=str(names))
    groups = {"People & Body", "Animals & Nature", "Food & Drink", "Travel & Places", "Objects"}
    assert set(spec.classnames) == groups and groups < set(EMOJI_GROUPS) and len(spec) == len(photos) == 8
    truth = {p["name"]: p["group"] for p in photos}
    got = {path.rsplit("/", 1)[-1][:-4]: spec.classnames[t] for path, t in zip(spec.paths, spec.targets)}
    assert got == truth and got["chelsea"] == "Animals & Nature" and got["coffee"] == "Food & Drink"
    from PIL import Image
    assert Image.open(images / "objects" / "coins.png").mode == "RGB"          # grey photo stored as RGB
    assert Image.open(images / "animals_nature" / "horse.png").getpixel((0, 0)) == (255, 255, 255)


def test_bad_photo_lists_name_the_entry(tmp_path):
    bad = tmp_path / "photos.yaml"
    bad.write_text("photos:\n  - {name: chelsea, label: cat}\n")
    with pytest.raises(ConfigError, match=r"photos\[0\] has no group"):
        read_photo_list(bad)
    with pytest.raises(ConfigError, match="not among the classes"):
        write_photo_folder(tmp_path / "x", photos=[{"name": "chelsea", "label": "cat", "group": "Cats"}])
    pytest.importorskip("skimage")
    with pytest.raises(ConfigError, match="skimage.data has no photo 'nope'"):
        write_photo_folder(tmp_path / "y", photos=[{"name": "nope", "label": "x", "group": "Objects"}])
