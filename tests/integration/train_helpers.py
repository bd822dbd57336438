"""Shared by the trainer integration tests: real shards, real configs, real processes (torchrun, SIGKILL)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def png(i: int) -> bytes:
    img = Image.new("RGB", (36, 36), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
    for x in range(0, 36, 5):
        img.putpixel((x, (i * 7) % 36), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_shards(root: Path, n: int, per_shard: int, prefix: str = "k") -> str:
    from mmfm.data.shards import write_shards
    write_shards(({"__key__": f"{prefix}{i:04d}", "png": png(i), "txt": f"colour {i % 6} item {prefix}{i % 3}"}
                  for i in range(n)), root, shard_size=per_shard)
    return str(root)


def write_config(path: Path, train: str, out: Path, data: dict | None = None, train_cfg: dict | None = None,
                 **sections) -> Path:
    cfg = {"model": {"name": "tiny"},
           "data": {"train": [{"path": train}], "batch_size": 8, "workers": 0, "shuffle_buffer": 16, **(data or {})},
           "train": {"output_dir": str(out), "warmup_steps": 2, "lr": 1e-3, "log_every": 1,
                     "ckpt_every_steps": None, "progress": False, "tensorboard": False, **(train_cfg or {})},
           **sections}
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return e


def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run([PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "mmfm", *args], timeout=timeout)


def load_weights(ckpt_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(ckpt_dir) / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
