"""`mmfm shards build|inspect` through the real CLI entry point: counts, schema, --verify, --sheet."""
import shutil

import pytest
from PIL import Image

from mmfm.cli import main
from mmfm.data.shards import read_manifest
from tests.integration.train_helpers import ROOT


@pytest.fixture(scope="module")
def shards(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("cli") / "out"
    rc = main(["shards", "build", "--recipe", "image_folder", "--out", str(out), "--size", "32",
               "--shard-size", "2", "--workers", "0", "--no-progress", "--no-shuffle"])   # class order: blue first
    assert rc == 0
    return out


def test_build_prints_summary_and_writes_manifest(shards, capsys):
    m = read_manifest(shards)
    assert m["total_samples"] == 6 and len(m["shards"]) == 3 and m["args"]["shard_size"] == 2


def test_inspect_prints_counts_and_schema(shards, capsys):
    assert main(["shards", "inspect", str(shards)]) == 0
    out = capsys.readouterr().out
    assert "shards: 3   samples: 6" in out and "classes: 2 (0=blue_square, 1=red_circle)" in out
    assert ".jpg   image JPEG RGB" in out and ".txt   text ('a photo of a blue square.')" in out
    assert "json {captions, class, orig_size, sha256, source}" in out


def test_verify_ok_and_decode(shards, capsys):
    assert main(["shards", "inspect", str(shards), "--verify", "--decode", "--no-progress"]) == 0
    assert "all shards OK" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete"])
def test_verify_names_a_corrupt_shard(shards, tmp_path, capsys, damage):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    tar = copy / "shard-000001.tar"
    data = tar.read_bytes()
    if damage == "truncate":
        tar.write_bytes(data[: len(data) // 3])
    elif damage == "flip_byte":
        tar.write_bytes(data[:700] + bytes([data[700] ^ 0xFF]) + data[701:])
    else:
        tar.unlink()
    assert main(["shards", "inspect", str(copy), "--verify", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "CORRUPT" in err and "shard-000001.tar" in err and "shard-000000.tar" not in err


def test_verify_without_manifest_reads_tars_through(shards, tmp_path, capsys):
    copy = tmp_path / "bare"
    copy.mkdir()
    for t in shards.glob("*.tar"):
        shutil.copy(t, copy)
    (copy / "shard-000002.tar").write_bytes((copy / "shard-000002.tar").read_bytes()[:1500])
    assert main(["shards", "inspect", str(copy), "--verify", "--no-progress"]) == 1
    assert "shard-000002.tar: unreadable" in capsys.readouterr().err


def test_sheet_writes_a_contact_sheet(shards, tmp_path, capsys):
    png = tmp_path / "sheet.png"
    assert main(["shards", "inspect", str(shards), "--sheet", str(png)]) == 0     # all 6 fit: no title line
    img = Image.open(png)
    assert img.size == (6 * 160, 160 + 44)
    assert img.getpixel((80, 80)) != (255, 255, 255)      # an image was drawn in the first cell
    assert "Title" not in img.text
    assert capsys.readouterr().out.splitlines()[-1] == f"contact sheet: {png}"


def test_sheet_says_when_it_shows_fewer_samples_than_the_shards_hold(shards, tmp_path, capsys):
    from mmfm.data.shards.inspect import TITLE_H

    png = tmp_path / "sheet.png"
    assert main(["shards", "inspect", str(shards), "--sheet", str(png), "-n", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"contact sheet: {png} (4 of 6 shown)"
    img = Image.open(png)
    assert img.text["Title"] == "4 of 6 shown"
    assert img.size == (6 * 160, TITLE_H + 160 + 44)
    assert any(img.getpixel((x, 10)) != (255, 255, 255) for x in range(4, 120))       # the title is drawn
    assert img.getpixel((80, TITLE_H + 80)) != (255, 255, 255)                       # the first image below it
    bare = tmp_path / "bare"           # no manifest.json: the tars' samples are counted
    bare.mkdir()
    for t in shards.glob("*.tar"):
        shutil.copy(t, bare)
    assert main(["shards", "inspect", str(bare), "--sheet", str(tmp_path / "bare.png"), "-n", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(5 of 6 shown)")
    assert Image.open(tmp_path / "bare.png").text["Title"] == "5 of 6 shown"


def test_build_errors_are_clear(tmp_path, capsys):
    assert main(["shards", "build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["shards", "build", "--recipe", "no_such_recipe", "--out", str(tmp_path / "o")]) == 2
    shipped = sorted(p.parent.name for p in (ROOT / "data_recipes").glob("*/recipe.yaml"))   # every recipe, in order
    assert len(shipped) >= 5 and f"known recipes: {', '.join(shipped)})" in capsys.readouterr().err
    assert main(["shards", "build", "--recipe", "image_folder", "--out", str(tmp_path / "o"),
                 "--set", "image.sise=3"]) == 2
    assert "Did you mean 'size'" in capsys.readouterr().err


def test_inspect_holdout_root_inspects_both_splits(tmp_path, repo_root, capsys):
    fixture = str(repo_root / "data_recipes/noto_emoji/fixture/emoji-test.txt")
    out = tmp_path / "emoji"
    assert main(["shards", "build", "--recipe", "noto_emoji", "--input", fixture, "--out", str(out),
                 "--size", "24", "--holdout", "0.3", "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["shards", "inspect", str(out), "--verify", "--no-progress", "--sheet", str(tmp_path / "s.png")]) == 0
    text = capsys.readouterr().out
    assert "split: train" in text and "split: heldout" in text and "classes: 9" in text
    assert (tmp_path / "s_train.png").is_file() and (tmp_path / "s_heldout.png").is_file()


@pytest.mark.parametrize("case", ["folder_without_images", "header_only_csv", "every_input_skipped"])
def test_a_build_that_writes_nothing_fails_and_says_why(tmp_path, capsys, case):
    if case == "folder_without_images":
        for name in ("cat", "dog"):
            (tmp_path / "in" / name).mkdir(parents=True)
            (tmp_path / "in" / name / "notes.txt").write_text("no images here")
        src, why = tmp_path / "in", "gave 0 inputs: its class folders hold no image files (.bmp, .gif, .jpeg"
    elif case == "header_only_csv":
        src, why = tmp_path / "t.csv", "gave 0 inputs: it has no rows or records"
        src.write_text("image,caption\n")
    else:
        src = tmp_path / "t.csv"
        src.write_text("image,caption\nmissing.jpg,a cat\nalso_missing.jpg,a dog\n,no image\n")
        why = "all 3 inputs of {} were skipped (file_not_found: 2, missing_image: 1); each is listed in"
        why = why.format(src)
    out = tmp_path / "out"
    assert main(["shards", "build", str(src), "--out", str(out), "--workers", "0", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the build wrote 0 samples" in err and why in err, err
    assert not (out / "manifest.json").exists()                # nothing that looks like a dataset
    assert len((out / "failures.jsonl").read_text().splitlines()) == (3 if case == "every_input_skipped" else 0)
    # nothing to resume: once the input is fixed, the same command runs again without --overwrite
    if case == "header_only_csv":
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.jpg")
        src.write_text("image,caption\na.jpg,a red square\n")
        assert main(["shards", "build", str(src), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
        assert read_manifest(out)["total_samples"] == 1
