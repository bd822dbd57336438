"""Configs and inputs as a user outside the checkout meets them: ``mmfm train NAME`` takes a config shipped with
mmfm (package data, so it works after a pip install), a missing config says where the named ones live, and a
missing image folder is an input error that names the path, not a "config error"."""
import pytest

from mmfm.cli import main
from mmfm.config import load_experiment
from mmfm.config.resources import resource_dir


@pytest.mark.parametrize("command", [["zeroshot", "{p}", "--model", "runs/x"],
                                     ["retrieval", "{p}", "--model", "runs/x"],
                                     ["caption", "{p}", "--model", "runs/x", "--out", "alt.jsonl"]])
def test_missing_image_folder_is_an_input_error_naming_the_path(tmp_path, capsys, command):
    missing = tmp_path / "missing_dir"
    assert main([a.format(p=missing) for a in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmfm {command[0]}: input error: ") and str(missing) in err, err
    assert "config error" not in err


def test_train_takes_the_name_of_a_shipped_config_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                                   # not the checkout: no configs/ folder here
    shipped = resource_dir("configs", "experiments")
    assert load_experiment("demo/caption").train.output_dir == "runs/demo/caption"
    for spec in ("caption/tiny_fixture", "caption/tiny_fixture.yaml", "configs/experiments/caption/tiny_fixture.yaml"):
        assert load_experiment(spec) == load_experiment(shipped / "caption" / "tiny_fixture.yaml"), spec
    assert main(["shards", "build", "--recipe", "coco_captions", "--out", "data/coco_fixture"]) == 0
    assert main(["train", "caption/tiny_fixture", "--max-steps", "1", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "tiny_caption" / "checkpoints" / "latest" / "model.safetensors").is_file()


def test_a_missing_config_says_where_the_named_configs_live(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "demo/captoin"]) == 2
    err = capsys.readouterr().err
    shipped = resource_dir("configs", "experiments")
    assert err.startswith("mmfm train: config error: config file not found: demo/captoin. Did you mean "
                          "'demo/caption'? Named configs (e.g. mmfm train demo/caption) live in "), err
    assert str(shipped) in err and "demo/, distill/, finetune/" in err
    assert main(["train", "my_experiment.yaml"]) == 2
    assert "config file not found: my_experiment.yaml. Named configs" in capsys.readouterr().err
