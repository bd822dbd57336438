"""The general model's sources (data_recipes/openmoji, country_flags, fashion_mnist, skimage_photos) on their
fixtures in the real layout, and the mix of recipes built as one folder: cross-source dedup, one label space,
per-source counts in the manifest."""
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmfm.data.shards import read_manifest
from mmfm.data.shards.build import build
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.mix import MixPart, build_mix
from mmfm.data.shards.options import BuildOptions
from mmfm.data.shards.recipes import resolve_options

RECIPES = Path(__file__).resolve().parents[2] / "data_recipes"
OPENMOJI = RECIPES / "openmoji/fixture/openmoji/data/openmoji.json"
FLAGS = RECIPES / "country_flags/fixture/svg-country-flags/countries.json"
FASHION = RECIPES / "fashion_mnist/fixture/t10k-images-idx3-ubyte.gz"


def _build(tmp_path, recipe, path=None, sets=()):
    sets = ["workers=0", *sets] + ([f"source.path={path}"] if path else [])
    build(resolve_options(recipe, sets), tmp_path / recipe, progress=False)
    m = read_manifest(tmp_path / recipe)
    samples = [s for sh in m["shards"] for s in iter_samples(tmp_path / recipe / sh["name"])]
    return m, samples, [json.loads(s["json"]) for s in samples]


def test_openmoji_fixture_captions_from_annotation_and_tags_and_bad_files_dropped(tmp_path):
    pytest.importorskip("cairosvg")
    m, samples, metas = _build(tmp_path, "openmoji", OPENMOJI)
    assert m["classes"][8] == "Flags" and len(m["classes"]) == 9
    # 11 entries: the component is not read; missing SVG, broken SVG and a pixel-identical copy are skipped
    assert m["total_samples"] == 7 and m["failures"] == {"decode_error": 1, "duplicate": 1, "missing_image": 1}
    by_name = {x["name"]: x for x in metas}
    assert "light skin tone" not in by_name and "grinning face again" not in by_name
    grin = by_name["grinning face"]
    assert grin["captions"] == ["grinning face", "cheerful, cheery, face, grin, grinning, happy, laugh, nice, smile, "
                                "smiling, teeth", "smile, happy"]
    assert grin["author"] == "Emily Jäger" and grin["group"] == "Smileys & Emotion"
    cls = {x["name"]: s.get("cls") for x, s in zip(metas, samples)}
    assert int(cls["flag: Japan"]) == 8 and int(cls["pizza"]) == 3
    assert cls["goldfish"] is None and by_name["goldfish"]["group"] == "extras-openmoji"   # no CLDR group, no label
    assert Image.open(io.BytesIO(samples[0]["jpg"])).size == (64, 64)


def test_country_flags_fixture_names_and_placeholder_dropped(tmp_path):
    m, samples, metas = _build(tmp_path, "country_flags", FLAGS)
    assert m["total_samples"] == 5 and m["failures"] == {"missing_image": 1, "placeholder": 1}
    jp = next(x for x in metas if x["code"] == "JP")
    assert jp["captions"] == ["flag: Japan", "flag of Japan"] and jp["group"] == "Flags"
    assert {int(s["cls"]) for s in samples} == {8}
    assert resolve_options("country_flags").source.path == str(
        Path.home() / ".cache/mmfm/svg-country-flags-1.2.10/countries.json")


def test_fashion_mnist_fixture_is_the_real_files_first_images(tmp_path):
    from mmfm.data.idx import read_idx

    m, samples, metas = _build(tmp_path, "fashion_mnist", FASHION)
    labels = read_idx(FASHION.with_name("t10k-labels-idx1-ubyte.gz"))
    assert m["total_samples"] == 20 and m["classes"][9] == "ankle boot"
    assert [int(s["cls"]) for s in samples] == labels.tolist()
    assert metas[0]["captions"] == ["ankle boot", "a photo of a ankle boot"]
    real = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    if real.is_file():                       # the fixture is the real file cut short, image for image
        assert (read_idx(real)[:20] == read_idx(FASHION)).all()


def test_skimage_photos_recipe_labels_and_groups(tmp_path):
    pytest.importorskip("skimage")
    m, samples, metas = _build(tmp_path, "skimage_photos")
    assert m["total_samples"] == 8 and m["failures"] == {}
    cat = next((x, s) for x, s in zip(metas, samples) if x["name"] == "cat")
    assert cat[0]["captions"] == ["cat"] and m["classes"][int(cat[1]["cls"])] == "Animals & Nature"


def test_mix_dedups_across_sources_unions_labels_and_counts_per_source(tmp_path):
    """A flag PNG that a second source also holds is written once; each part's counts land in the manifest."""
    folder = tmp_path / "pictures" / "misc"
    folder.mkdir(parents=True)
    shutil.copy(FLAGS.parent / "png250px" / "jp.png", folder / "copy_of_japan.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder / "green.png")
    parts = [MixPart("country_flags", "country_flags", [f"source.path={FLAGS}"]),
             MixPart("fashion_mnist", "fashion_mnist", [f"source.path={FASHION}", "source.limit=6"]),
             MixPart("folder", "image_folder", [f"source.path={tmp_path / 'pictures'}"])]
    opts = BuildOptions(workers=0, shard_size=4)
    opts.image.size = 32
    manifests = build_mix(parts, opts, tmp_path / "mix", progress=False)
    m = manifests[""]
    assert m["sources"] == {"country_flags": {"written": 5, "skipped": {"missing_image": 1, "placeholder": 1}},
                            "fashion_mnist": {"written": 6, "skipped": {}},
                            "folder": {"written": 1, "skipped": {"duplicate": 1}}}
    assert read_manifest(tmp_path / "mix")["total_samples"] == 12
    assert m["classes"][:9][-1] == "Flags" and m["classes"][9:19][0] == "t-shirt" and m["classes"][-1] == "misc"
    samples = [s for sh in m["shards"] for s in iter_samples(tmp_path / "mix" / sh["name"])]
    metas = [json.loads(s["json"]) for s in samples]
    assert {x["collection"] for x in metas} == {"country_flags", "fashion_mnist", "folder"}
    for x, s in zip(metas, samples):         # labels keep their name, indices point into the union
        assert m["classes"][int(s["cls"])] == x["label"]
    again = build_mix(parts, BuildOptions(workers=0, shard_size=4, image=opts.image), tmp_path / "mix", resume=True,
                      progress=False)
    assert again[""]["sources"] == m["sources"]


def test_icon_theme_fixture_names_as_captions_and_bad_icons_dropped(tmp_path):
    fixture = RECIPES / "icon_theme/fixture/Adwaita/48x48"
    m, samples, metas = _build(tmp_path, "icon_theme", fixture)
    # 8 PNGs read (the symbolic one is not): broken, transparent placeholder and the copy are skipped
    assert m["total_samples"] == 5 and m["failures"] == {"decode_error": 1, "duplicate": 1, "placeholder": 1}
    calc = next(x for x in metas if x["name"] == "accessories-calculator")
    assert calc["captions"] == ["accessories calculator", "accessories calculator icon"]
    assert calc["context"] == "legacy" and calc["theme"] == "Adwaita"
    assert all("cls" not in s for s in samples) and m["classes"] == []
    assert "edit-cut" in {x["name"] for x in metas} and "edit-cut-copy" not in {x["name"] for x in metas}


def test_openclipart_fixture_captions_from_svg_metadata_and_bad_files_dropped(tmp_path):
    """The fixture holds real openclipart-svg files in the package's layout: titles, descriptions and keywords
    as written become captions; collection titles, author-template titles, contact details and package tags do
    not; a file with no text left, a broken file, a blank drawing and a copy are skipped; symlinks are not read."""
    pytest.importorskip("cairosvg")
    fixture = RECIPES / "openclipart/fixture/openclipart/svg"
    assert (fixture / "shapes/arrows/arki_arrow_down_jean_vic_.svg").is_symlink()
    m, samples, metas = _build(tmp_path, "openclipart", fixture)
    # 18 files read (the symlink is not): no text, broken, blank and the copy skipped
    assert m["failures"] == {"missing_caption": 1, "decode_error": 1, "placeholder": 1, "duplicate": 1}
    assert m["total_samples"] == 14 and m["classes"] == [] and all("cls" not in s for s in samples)
    by_file = {x["file"]: x for x in metas}
    dog = by_file["animals/mammals/dog_03_drawn_with_strai_01.svg"]
    assert dog["captions"] == ["Dog 03 Drawn With Straight Lines", "mammal, dog, animal"]
    assert dog["category"] == "animals/mammals" and dog["creator"] == "Gerald G."
    ext = by_file["geography/extremadura_01.svg"]
    assert ext["captions"][:2] == ["Extremadura", "a simple map of extremadura, enjoy it!"]
    # "Clipart by Nicu Buculei - piggybank" on a die: the author's reused template, not this picture's title
    assert by_file["recreation/dice.svg"]["captions"] == ["game, recreation"]
    assert by_file["signs_and_symbols/flags/africa/malawi.svg"]["captions"] == ["flag, africa, sign"]   # no title
    battery = by_file["electronics/battery/battery_jean-victor_bali_01.svg"]
    assert battery["captions"] == ["Battery"] and battery["description"] == ""        # an e-mail address
    stars = [x for f, x in by_file.items() if f.startswith("shapes/stars/")]
    assert len(stars) == 6 and all(x["title"] == "" for x in stars)                   # "gramastar" on 6 files
    assert stars[0]["captions"] == ["stars, shapes, magick, geometry"]
    assert by_file["shapes/arki_arrow_down_jean_vic_.svg"]["captions"] == ["arki arrow down", "shape, arrows"]
    assert "electronics/antenna.svg" not in by_file and "special/blank_page.svg" not in by_file
    assert sum(f.startswith("food/meats_and_eggs/") for f in by_file) == 1              # bacon_02: a copy
    assert all(len(x["captions"]) >= 1 and all(c.strip() for c in x["captions"]) for x in metas)
    assert Image.open(io.BytesIO(samples[0]["jpg"])).size == (64, 64)

