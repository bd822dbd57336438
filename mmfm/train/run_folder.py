"""``train.output_dir``: the run folder, checked once before any training work (``open_run_folder``).

It holds ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``wandb/`` and ``checkpoints/`` (the layout of
:mod:`mmfm.models.layout`). It may be an fsspec URL (``s3://bucket/runs/clip``): every process then works in a
local staging folder; rank 0 uploads each checkpoint folder, then ``metrics.jsonl``, and writes the
``checkpoints/latest`` object (a text file naming the step folder) last, so a reader never follows ``latest`` to a
partial upload; a resume downloads the step folder ``latest`` names into each process's staging folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mmfm.config import ConfigError
from mmfm.data import fs
from mmfm.models.layout import CHECKPOINTS, LATEST, STEP_RE, list_checkpoints, point_latest

__all__ = ["RunFolder", "open_run_folder", "check_output_dir", "check_run_folder", "clear_run"]


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
        return fs.join(self.remote, CHECKPOINTS)

    def check_writable(self) -> None:
        """Prove the folder takes writes (a local folder is created; a URL gets a probe: credentials, bucket)
        before any training work."""
        if self.remote is None:
            return _check_local_writable(self.local)
        probe = fs.join(self.remote, f".write_test.{os.getpid()}")
        try:
            fs.write_bytes(probe, b"ok", "train.output_dir")
            fs.remove(probe, "train.output_dir")
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - no bucket, no credentials, no permission
            raise ConfigError(f"train.output_dir: cannot write to {self.remote}: {type(e).__name__}: {e}") from None

    def has_checkpoints(self) -> bool:
        if self.remote is not None:
            return bool(self.remote_steps()) or fs.exists(fs.join(self._ckpts(), LATEST))
        ckpts = self.local / CHECKPOINTS
        return bool(list_checkpoints(ckpts)) or (ckpts / LATEST).is_symlink()

    def remote_steps(self) -> list[str]:
        filesystem, path = fs.url_fs(self._ckpts(), "train.output_dir")
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in filesystem.ls(path, detail=False, refresh=True)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if STEP_RE.match(n))

    def pull(self, resume: str | None) -> None:
        """``train.resume=latest`` on a URL run: download the step folder its ``latest`` names (and
        ``metrics.jsonl``, rewound by the trainer) into the staging folder, where the checkpointer finds it."""
        if self.remote is None or resume != "latest":
            return
        latest = fs.join(self._ckpts(), LATEST)
        if not fs.exists(latest, "train.output_dir"):
            return
        name = fs.read_text(latest, "train.output_dir").strip()
        root = self.local / CHECKPOINTS
        fs.download(fs.join(self._ckpts(), name), root / name, "train.output_dir")
        point_latest(root, root / name)
        if fs.exists(fs.join(self.remote, "metrics.jsonl")):
            fs.download(fs.join(self.remote, "metrics.jsonl"), self.local / "metrics.jsonl")

    def push(self, step_dir: Path, keep_last: int) -> None:
        """Rank 0, after a checkpoint is written: upload the step folder, then metrics.jsonl, then ``latest``
        (the commit), then prune the URL's old step folders."""
        if self.remote is None:
            return
        target = fs.join(self._ckpts(), step_dir.name)
        fs.remove(target, "train.output_dir")            # a partial upload of a killed run, or a re-save
        fs.upload(step_dir, target, "train.output_dir")
        for name in ("metrics.jsonl", "config.yaml"):
            if (self.local / name).is_file():
                fs.upload(self.local / name, fs.join(self.remote, name), "train.output_dir")
        fs.write_bytes(fs.join(self._ckpts(), LATEST), step_dir.name + "\n", "train.output_dir")
        steps = self.remote_steps()
        for old in steps[: max(len(steps) - max(keep_last, 1), 0)]:
            if old != step_dir.name:
                fs.remove(fs.join(self._ckpts(), old), "train.output_dir")


def _check_local_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir: cannot write to {path}: {e.strerror or e}") from None


def check_output_dir(path: str | os.PathLike) -> None:
    """Create ``path`` and prove it is writable, before any training work (an fsspec URL: write a probe)."""
    RunFolder(str(path), stage=False).check_writable()


def check_run_folder(run: RunFolder, tc) -> None:
    """A new run (no ``train.resume``) must not write into another run's checkpoints: it would replace
    same-numbered steps, repoint ``latest`` and prune across both runs. ``train.overwrite`` deletes the old run."""
    if tc.resume or tc.overwrite or not run.has_checkpoints():
        return
    path = run.remote or run.local
    ckpts = fs.join(run.remote, CHECKPOINTS) if run.remote else run.local / CHECKPOINTS
    raise ConfigError(f"train.output_dir: {path} already holds a run's checkpoints ({ckpts}). Continue it with "
                      f"--resume latest, start afresh there with --overwrite (train.overwrite=true; deletes "
                      f"its checkpoints, metrics.jsonl, tb/ and wandb/), or choose another --output-dir")


def open_run_folder(tc) -> RunFolder:
    """The run folder of the ``train:`` section ``tc``, checked once, before any heavy work: writable, and not
    another run's (unless resuming or overwriting). A URL gets this process's staging folder."""
    unstaged = RunFolder(str(tc.output_dir), stage=False)
    unstaged.check_writable()
    check_run_folder(unstaged, tc)
    return RunFolder(str(tc.output_dir))


def clear_run(path: Path, remote: str | None = None) -> None:
    """``train.overwrite``: remove what a previous run left (checkpoints, metrics, TensorBoard, local wandb files);
    rank 0 only. ``remote``: the run's fsspec URL, cleared too."""
    for name in (CHECKPOINTS, "tb", "metrics.jsonl") if remote else ():
        fs.remove(fs.join(remote, name), "train.output_dir")
    for name in (CHECKPOINTS, "tb", "wandb"):
        shutil.rmtree(path / name, ignore_errors=True)
    (path / "metrics.jsonl").unlink(missing_ok=True)
