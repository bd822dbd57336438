"""Every command in README.md's bash blocks runs, in order, on tiny data, so the tour cannot rot.

The only change made to a command: training runs are cut to two steps of a small batch (and `make` lines are
skipped: they are what runs this test). Inputs the tour names (`my_photos/`, `pairs.csv`) are made here.
"""
from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CUT = " --max-steps 2 --set data.batch_size=4 --set data.workers=0 --set train.ckpt_every_steps=2"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#") and not line.startswith("make "):
                cmds.append(line)
    return cmds


def make_inputs(work: Path) -> None:
    from PIL import Image, ImageDraw
    colors = {"red_circle": (220, 30, 30), "blue_square": (30, 30, 220)}
    rows = []
    for cls, color in colors.items():
        folder = work / "my_photos" / cls
        folder.mkdir(parents=True)
        for i in range(6):
            img = Image.new("RGB", (80 + 4 * i, 72), (240 - 10 * i, 240, 235))
            d = ImageDraw.Draw(img)
            box = (10 + i, 10, 60 + i, 60)
            (d.ellipse if "circle" in cls else d.rectangle)(box, fill=color)
            path = folder / f"{cls}_{i}.jpg"
            img.save(path, quality=90)
            rows.append({"image": str(path), "caption": f"a {cls.replace('_', ' ')} on a pale background, number {i}"})
    with open(work / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption"])
        w.writeheader()
        w.writerows(rows)


def test_readme_lists_commands():
    cmds = readme_commands()
    for must in ("mmfm shards build", "mmfm train", "mmfm zeroshot", "mmfm caption", "torchrun"):
        assert any(c.startswith(must) for c in cmds), must


@pytest.mark.slow
@pytest.mark.timeout(900)   # a dozen CLI processes; on a loaded 2-core machine the default 300 s ran out
def test_readme_tour_runs(tmp_path):
    make_inputs(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for cmd in readme_commands():
        if " train " in f" {cmd} ":
            cmd += TRAIN_CUT
        if cmd.startswith("torchrun"):  # torchrun's own python: the venv's
            cmd = f"{shlex.quote(sys.executable)} -m torch.distributed.run{cmd[len('torchrun'):]}"
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "shards/pairs/manifest.json").is_file()
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert (tmp_path / "zeroshot_report/confusion.png").is_file()
    lines = (tmp_path / "alt.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert (tmp_path / "alt.html").is_file()
