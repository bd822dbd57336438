"""A plain (not editable) install works: build the wheel, install it into a fresh venv, then, from a folder that
is not the source tree, build shards with a named recipe, train a named model for a step (and a named experiment
config), caption with a named
decoding preset and start the demo's first stage. Named configs ship as package data (mmfm/resources)."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args, cwd, timeout=300, env=None):
    r = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": "", **(env or {})})
    assert r.returncode == 0, f"{args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
          ROOT], cwd=tmp)
    wheel = next((tmp / "dist").glob("mmfm-*.whl"))
    v = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", v], cwd=tmp)
    site = Path(subprocess.check_output([v / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()"
                                         "['purelib'])"], text=True).strip())
    # the dependencies (torch, timm, ...) come from the project's venv; mmfm itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", v / "bin" / "python", "install", "-q", "--no-deps", "--no-index",
          wheel], cwd=tmp)
    return v


def test_wheel_ships_configs_recipes_and_presets(venv, tmp_path):
    py, mmfm = venv / "bin" / "python", venv / "bin" / "mmfm"
    where = _run([py, "-c", "import mmfm, mmfm.generate as g; print(mmfm.__file__); print(g.preset_names())"],
                 cwd=tmp_path).stdout
    assert str(venv) in where.splitlines()[0] and "beam" in where      # the installed copy, not the checkout
    _run([mmfm, "shards", "build", "--recipe", "coco_captions", "--out", "shards"], cwd=tmp_path)
    (tmp_path / "cap.yaml").write_text(
        "model: {name: tiny_captioner}\ntask: {name: caption}\n"
        "data: {train: [{path: shards}], batch_size: 3, samples_per_epoch: 3, workers: 0}\n"
        "train: {output_dir: run, max_steps: 1, tensorboard: false, progress: false}\n")
    _run([mmfm, "train", "cap.yaml"], cwd=tmp_path)
    # a shipped experiment config by its name (configs/experiments/caption/tiny_fixture.yaml in the wheel)
    _run([mmfm, "train", "caption/tiny_fixture", "--max-steps", "1", "--output-dir", "named", "--no-progress",
          "--set", "data.train=[{path: shards}]"], cwd=tmp_path)
    assert (tmp_path / "named" / "checkpoints" / "latest" / "config.yaml").is_file()
    images = tmp_path / "shards"
    img = next(iter(sorted((ROOT / "data_recipes" / "coco_captions" / "fixture" / "images").glob("*.jpg"))))
    _run([mmfm, "caption", "--model", "run", img, "--preset", "beam", "--max-new-tokens", "3", "--out", "alt.jsonl",
          "--quiet"], cwd=tmp_path)
    assert (tmp_path / "alt.jsonl").read_text().count("\n") == 1 and images.is_dir()
    _run([mmfm, "demo", "--quick", "--until", "shards", "--no-progress", "--out", "demo"], cwd=tmp_path)
    assert (tmp_path / "demo" / "shards" / "train" / "manifest.json").is_file()
