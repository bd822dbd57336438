"""Training checkpoints (docs/architecture.md section 8): atomic, rotated, resumable.

``OUT/checkpoints/step_00000100/`` holds ``model.safetensors`` + ``config.yaml`` + ``meta.json`` (written by
``mmfm.models.checkpoint.write_pretrained``, so ``mmfm.load`` reads it) and ``trainer_state.pt`` (optimizer,
scheduler, per-rank RNG and data position; plain tensors/containers, read with ``weights_only=True``).
With ``train.strategy: fsdp`` every rank writes its shards of the model and the optimizer into ``sharded/``
(torch.distributed.checkpoint) instead, and ``trainer_state.pt`` holds the rest. The folder is filled under a temporary name and renamed into place; ``latest`` is a relative symlink
replaced atomically; only the newest ``keep_last`` step folders are kept.

``train.output_dir`` may be an fsspec URL (``s3://bucket/runs/clip``), see ``RunFolder``: every process works in
a local staging folder; rank 0 uploads each checkpoint folder, then ``metrics.jsonl``, and writes the
``checkpoints/latest`` object (a text file naming the step folder) last, so a reader never follows ``latest``
to a partial upload; a resume downloads the step folder ``latest`` names into each process's staging folder.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import torch

from mmfm.config import ConfigError, atomic_path, replace_dir, temp_dir_beside
from mmfm.data import fs

STATE = "trainer_state.pt"
STEP_RE = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _point_latest(ckpt_root: Path, target: Path) -> None:
    with atomic_path(ckpt_root / "latest") as tmp:
        os.symlink(target.name, tmp)


def new_checkpoint_dir(ckpt_root: Path, step: int) -> Path:
    """Rank 0: the temporary folder that becomes ``step_XXXXXXXX`` (the ranks of a sharded save all write into it)."""
    return temp_dir_beside(ckpt_root / step_dir_name(step))


def save_checkpoint(ckpt_root: Path, step: int, model, cfg, trainer_state: dict, meta: dict,
                    keep_last: int = 3, tmp: Path | None = None) -> Path:
    """Rank 0 only. Writes ``step_XXXXXXXX`` atomically, repoints ``latest``, prunes old ones. ``tmp``: the folder
    from :func:`new_checkpoint_dir` into which every rank already wrote its shards (``sharded/``); the model's
    weights are then not written again as ``model.safetensors``."""
    from mmfm.models.checkpoint import write_pretrained

    final = ckpt_root / step_dir_name(step)
    sharded, tmp = tmp is not None, tmp or new_checkpoint_dir(ckpt_root, step)
    try:
        write_pretrained(model, cfg, tmp, meta=meta, weights=not sharded)
        torch.save(trainer_state, tmp / STATE)
        replace_dir(tmp, final)                # also when re-saving the same step (e.g. final == last periodic)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(ckpt_root, final)
    prune(ckpt_root, keep_last, keep=final)
    return final


def prune(ckpt_root: Path, keep_last: int, keep: Path | None = None) -> None:
    ckpts = list_checkpoints(ckpt_root)
    for old in ckpts[: max(len(ckpts) - max(keep_last, 1), 0)]:
        if keep is not None and old.resolve() == keep.resolve():
            continue
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step_*.tmp*"):   # leftovers of a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)


def find_resume(spec: str, output_dir: Path) -> Path | None:
    """``latest`` -> the run's newest checkpoint (None when the run has none yet); else a checkpoint dir
    or run dir. Raises ConfigError for a path that is not a checkpoint."""
    from mmfm.models.checkpoint import resolve_latest      # the one reader of `latest`

    if fs.is_remote(spec):
        from mmfm.models.checkpoint import fetch_checkpoint
        spec = str(fetch_checkpoint(spec))
    if spec == "latest":
        root = output_dir / "checkpoints"
        if (root / "latest").exists():
            return resolve_latest(root)
        ckpts = list_checkpoints(root)
        return ckpts[-1] if ckpts else None
    p = Path(spec)
    if (p / STATE).is_file():
        return p
    if (p / "checkpoints" / "latest").exists():
        return resolve_latest(p / "checkpoints")
    raise ConfigError(f"train.resume: {spec} is not a training checkpoint (no {STATE}); use 'latest', a "
                      f"step_XXXXXXXX folder or a run folder. For weights only use train.init_from")


def check_run_folder(path: str | os.PathLike, tc) -> None:
    """A new run (no ``train.resume``) must not write into another run's checkpoints: it would replace
    same-numbered steps, repoint ``latest`` and prune across both runs. ``train.overwrite`` deletes the old run."""
    if tc.resume or tc.overwrite:
        return
    if fs.is_remote(path):
        ckpts = fs.join(str(path), "checkpoints")
        if not RunFolder(str(path), stage=False).remote_steps() and not fs.exists(fs.join(ckpts, "latest")):
            return
    else:
        path = fs.local_path(path)
        ckpts = path / "checkpoints"
        if not (list_checkpoints(ckpts) or (ckpts / "latest").is_symlink()):
            return
    raise ConfigError(f"train.output_dir: {path} already holds a run's checkpoints ({ckpts}). Continue it with "
                      f"--resume latest, start afresh there with --overwrite (train.overwrite=true; deletes "
                      f"its checkpoints, metrics.jsonl, tb/ and wandb/), or choose another --output-dir")


def clear_run(path: Path, remote: str | None = None) -> None:
    """``train.overwrite``: remove what a previous run left (checkpoints, metrics, TensorBoard, local wandb files);
    rank 0 only. ``remote``: the run's fsspec URL, cleared too."""
    for name in ("checkpoints", "tb", "metrics.jsonl") if remote else ():
        fs.remove(fs.join(remote, name), "train.output_dir")
    for name in ("checkpoints", "tb", "wandb"):
        shutil.rmtree(path / name, ignore_errors=True)
    (path / "metrics.jsonl").unlink(missing_ok=True)


def load_trainer_state(ckpt: Path) -> dict:
    path = ckpt / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise ConfigError(f"cannot read {path}: {e}") from e


class RunFolder:
    """``train.output_dir``: a local folder (``local`` is it), or an fsspec URL mirrored from a local staging
    folder (``local``: a fresh temporary folder per process; ``remote``: the URL). See the module doc."""

    def __init__(self, output_dir: str, stage: bool = True):
        fs.check_url(output_dir, "train.output_dir")
        self.remote = str(output_dir).rstrip("/") if fs.is_remote(output_dir) else None
        if self.remote is None:
            self.local = fs.local_path(output_dir)
        else:
            self.local = Path(tempfile.mkdtemp(prefix="mmfm-run-")) if stage else Path()

    def _ckpts(self) -> str:
        return fs.join(self.remote, "checkpoints")

    def check_writable(self) -> None:
        """Prove the URL takes writes (credentials, bucket) before any training work."""
        probe = fs.join(self.remote, f".write_test.{os.getpid()}")
        try:
            fs.write_bytes(probe, b"ok", "train.output_dir")
            fs.remove(probe, "train.output_dir")
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - no bucket, no credentials, no permission
            raise ConfigError(f"train.output_dir: cannot write to {self.remote}: {type(e).__name__}: {e}") from None

    def remote_steps(self) -> list[str]:
        filesystem, path = fs.url_fs(self._ckpts(), "train.output_dir")
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in filesystem.ls(path, detail=False, refresh=True)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if STEP_RE.match(n))

    def pull(self, resume: str | None) -> None:
        """``train.resume=latest`` on a URL run: download the step folder its ``latest`` names (and
        ``metrics.jsonl``, rewound by the trainer) into the staging folder, where ``find_resume`` finds it."""
        if self.remote is None or resume != "latest":
            return
        latest = fs.join(self._ckpts(), "latest")
        if not fs.exists(latest, "train.output_dir"):
            return
        name = fs.read_text(latest, "train.output_dir").strip()
        root = self.local / "checkpoints"
        fs.download(fs.join(self._ckpts(), name), root / name, "train.output_dir")
        _point_latest(root, root / name)
        if fs.exists(fs.join(self.remote, "metrics.jsonl")):
            fs.download(fs.join(self.remote, "metrics.jsonl"), self.local / "metrics.jsonl")

    def push(self, step_dir: Path, keep_last: int) -> None:
        """Rank 0, after ``save_checkpoint``: upload the step folder, then metrics.jsonl, then ``latest``
        (the commit), then prune the URL's old step folders."""
        if self.remote is None:
            return
        target = fs.join(self._ckpts(), step_dir.name)
        fs.remove(target, "train.output_dir")            # a partial upload of a killed run, or a re-save
        fs.upload(step_dir, target, "train.output_dir")
        for name in ("metrics.jsonl", "config.yaml"):
            if (self.local / name).is_file():
                fs.upload(self.local / name, fs.join(self.remote, name), "train.output_dir")
        fs.write_bytes(fs.join(self._ckpts(), "latest"), step_dir.name + "\n", "train.output_dir")
        steps = self.remote_steps()
        for old in steps[: max(len(steps) - max(keep_last, 1), 0)]:
            if old != step_dir.name:
                fs.remove(fs.join(self._ckpts(), old), "train.output_dir")
