"""docs/finetune.md, "LoRA-tune and merge": its commands run in order on tiny data (real shards, real runs,
``mmfm`` in-process), and what they write is checked: only the LoRA adapters changed in training, the exported
merged model equals the unmerged one (<= 1e-5), the WiSE-FT sweep's ends are the initial and the fine-tuned
models, and the alpha = 0.5 export is the average of their weights.

The only changes to the documented commands: training is cut to two steps of a small batch on the tiny model
(``--set model.name=tiny``), and ``runs/emoji_lit`` (the starting point the page assumes) is trained here first.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmfm.cli import main as cli

from train_helpers import load_weights, make_shards

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CUT = ["--max-steps", "2", "--set", "data.batch_size=4", "--set", "data.workers=0", "--set",
             "model.name=tiny", "--set", "train.ckpt_every_steps=2", "--set", "train.warmup_steps=1",
             "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_commands() -> list[str]:
    text = (ROOT / "docs" / "finetune.md").read_text(encoding="utf-8")
    section = text.split("## LoRA-tune and merge", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
            for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def make_photos(root: Path) -> None:
    for c, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        folder = root / ("red" if c == 0 else "blue")
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 36), tuple(max(0, v - 20 * i) for v in colour)).save(folder / f"{i}.png")


def embed(model) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tok = model.tokenizer(["colour 1 item k0", "a red photo"])
    with torch.no_grad():
        return model.eval().encode_image(images), model.encode_text(tok["text_ids"], tok["attention_mask"])


@pytest.mark.slow
def test_lora_tune_and_merge_recipe_runs(tmp_path, monkeypatch):
    from mmfm.models import build_model
    from mmfm.models.checkpoint import load, load_weights as load_into
    from mmfm.models.layout import read_config

    cmds = lora_commands()
    assert [c.split()[:2] for c in cmds] == [["mmfm", "train"], ["mmfm", "export"], ["mmfm", "zeroshot"],
                                             ["mmfm", "eval"], ["mmfm", "export"]]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMFM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    make_shards(tmp_path / "shards" / "pairs", 16, 8)
    make_photos(tmp_path / "my_photos")
    assert cli(["train", "configs/experiments/contrastive/emoji_lit.yaml", "--output-dir", "runs/emoji_lit",
                "--set", "data.train=[{path: shards/pairs}]", "--set", "data.val=[]", "--set",
                "eval.retrieval_data=null", *TRAIN_CUT]) == 0
    for cmd in cmds:
        argv = shlex.split(cmd)[1:]
        assert cli(argv + (TRAIN_CUT if argv[0] == "train" else [])) == 0, cmd

    base, lora = load_weights(Path("runs/emoji_lit/checkpoints/latest")), load_weights(Path("runs/lora/checkpoints/latest"))
    adapters = {k for k in lora if ".lora_A." in k or ".lora_B." in k}
    assert adapters and any(k.startswith("visual.") for k in adapters) and any(k.startswith("text.") for k in adapters)
    plain = {k.replace(".base_layer", ""): v for k, v in lora.items() if k not in adapters}
    assert plain.keys() == base.keys()
    assert all(torch.equal(plain[k], base[k]) for k in base)             # only the adapters changed ...
    assert any(lora[k].abs().max() > 0 for k in adapters if ".lora_B." in k)   # ... and they did (B starts at 0)

    unmerged = build_model(read_config("runs/lora").model)               # the LoRA model as trained
    load_into(unmerged, "runs/lora")
    merged = load("exports/lora_merged")
    assert not any("lora" in k or "base_layer" in k for k in load_weights(Path("exports/lora_merged")))
    for a, b in zip(embed(unmerged), embed(merged)):
        assert (a - b).abs().max() <= 1e-5

    sweep = json.loads(Path("wise_ft.json").read_text())
    assert [r["alpha"] for r in sweep["results"]] == [0, 0.25, 0.5, 0.75, 1]
    from mmfm.eval.zeroshot import zeroshot_classify
    for alpha, spec in ((0, "runs/emoji_lit"), (1, "exports/lora_merged")):
        res = zeroshot_classify(spec, "my_photos", templates="simple", use_cache=False, progress=False)
        assert sweep["results"][alpha * 4]["top1"] == res.metrics["top1"]

    from mmfm.config import ConfigError
    from mmfm.models.wiseft import WiseFT
    w = WiseFT("runs/lora")
    base_model = load("runs/emoji_lit").state_dict()
    assert all(torch.equal(v, base_model[k]) for k, v in w.at(0.0).state_dict().items())     # alpha 0: initial
    assert all(torch.equal(v, w.finetuned[k]) for k, v in w.at(1.0).state_dict().items())   # alpha 1: fine-tuned
    with pytest.raises(ConfigError, match="runs/emoji_lit: WiSE-FT .* no train.init_from"):
        WiseFT("runs/emoji_lit")

    half = load_weights(Path("exports/lora_wise05"))
    ends = merged.state_dict()
    assert half.keys() == ends.keys()
    assert max((half[k] - (base_model[k] + ends[k]) / 2).abs().max().item() for k in half) <= 1e-6
