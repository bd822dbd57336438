"""docs/finetune.md: the commands of the two recipes below run, in order, on tiny data, so they cannot rot.

Changes made to the commands: training is cut to two steps of a small batch, the open_clip architecture is a
tiny model-config JSON (not ViT-B-32), and the continued pre-training config gets the tiny model of the
made-up ``runs/base``. Inputs the recipes name (``my_pairs.csv``, ``my_photos/``, ...) are made here."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "finetune.md"
TRAIN_CUT = " --max-steps 2 --set data.batch_size=4 --set data.workers=0 --set train.ckpt_every_steps=2"
RECIPES = {"openclip_csv": "Recipe: fine-tune an open_clip model on my CSV",
           "continue": "Recipe: continue pre-training a CLIP on a new domain"}
TINY_OPENCLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                                  "head_width": 16},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def recipe_commands(heading: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    return [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def _pairs(work: Path, name: str, colours: dict) -> None:
    from PIL import Image, ImageDraw
    rows = []
    for cls, color in colours.items():
        folder = work / f"{name}_images"
        folder.mkdir(exist_ok=True)
        for i in range(4):
            img = Image.new("RGB", (64 + 4 * i, 60), (240 - 10 * i, 240, 235))
            (ImageDraw.Draw(img).ellipse if "circle" in cls else ImageDraw.Draw(img).rectangle)(
                (8 + i, 8, 50 + i, 50), fill=color)
            img.save(folder / f"{cls}_{i}.jpg", quality=90)
            if name == "my_photos":
                (work / name / cls).mkdir(parents=True, exist_ok=True)
                img.save(work / name / cls / f"{i}.jpg", quality=90)
            rows.append({"image": f"{name}_images/{cls}_{i}.jpg", "caption": f"a {cls.replace('_', ' ')}, photo {i}"})
    if name != "my_photos":
        with open(work / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "caption"])
            w.writeheader()
            w.writerows(rows)


def _run(cmd: str, work: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"docs/finetune.md command failed: {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_recipes_are_in_the_doc():
    for heading in RECIPES.values():
        cmds = recipe_commands(heading)
        assert any(c.startswith("mmfm train") for c in cmds) and any(c.startswith("mmfm eval compare") for c in cmds)


@pytest.mark.slow
def test_finetune_recipes_run(tmp_path):
    import torch

    from mmfm.models import build_model, save_pretrained
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for name in ("my_pairs", "new_pairs", "old_pairs", "my_photos"):
        _pairs(tmp_path, name, {"red_circle": (220, 30, 30), "blue_square": (30, 30, 220)})
    (tmp_path / "tiny_openclip.json").write_text(json.dumps(TINY_OPENCLIP))
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, tmp_path / "runs" / "base")
    extra = {"openclip_csv.yaml": f" --set model.openclip={tmp_path / 'tiny_openclip.json'}",
             "continue_pretrain_replay.yaml": " --set model.name=tiny"}
    for recipe, heading in RECIPES.items():
        for cmd in recipe_commands(heading):
            if cmd.startswith("mmfm train"):
                cmd += TRAIN_CUT + next(v for k, v in extra.items() if k in cmd)
            _run(cmd, tmp_path)
    res = json.loads((tmp_path / "runs/eval/continued/compare.json").read_text())
    assert [d["name"] for d in res["data"]] == ["new", "old", "classes"]
    base, after = res["models"]
    rows = {(r["data"], r["metric"], r["model"]): r for r in res["rows"]}
    r = rows[("old", "image_to_text R@1", after)]
    assert r["ci95"] is not None and r["delta"] == pytest.approx(r["value"] - rows[("old", "image_to_text R@1", base)]["value"])
    assert ("classes", "zero-shot top1", after) in rows
    assert (tmp_path / "runs/eval/mine/compare.html").is_file()
    cfg = (tmp_path / "runs/continued/checkpoints/latest/config.yaml").read_text()
    assert "weight: 0.2" in cfg and "init_from" in cfg
