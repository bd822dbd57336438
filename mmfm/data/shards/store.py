"""Where a shard build's files end up: a local folder, or an fsspec URL (``s3://bucket/shards``).

The builder always writes into a local folder (``Store.local``: the output folder itself, or a staging folder
for a URL); ``publish(name)`` then uploads a finished file. Upload order is the commit order: a shard's tar,
then its ``_stats.json`` (which makes it count for ``--resume``), and ``manifest.json`` last, so a reader of
the URL never sees a manifest that names a shard not yet there. Uploaded tars are deleted from the staging
folder, so local disk holds at most the shard being written.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmfm.data import fs


class Store:
    def __init__(self, target: str, stage: Path | None = None):
        self.remote = str(target).rstrip("/") if fs.is_remote(target) else None
        self.local = Path(stage) if self.remote else fs.local_path(target)
        self.target = self.remote or str(self.local)

    def child(self, name: str) -> "Store":
        return Store(fs.join(self.remote, name), self.local / name) if self.remote else Store(str(self.local / name))

    def path(self, name: str) -> str:
        """How a file of this folder is named in messages."""
        return fs.join(self.remote, name) if self.remote else str(self.local / name)

    def sizes(self) -> dict[str, int]:
        """``{name: bytes}`` of the files in the folder."""
        if self.remote:
            return fs.listing(self.remote, "--out")
        if not self.local.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.local.iterdir() if p.is_file()}

    def read_json(self, name: str):
        text = fs.read_text(fs.join(self.remote, name), "--out") if self.remote else \
            (self.local / name).read_text(encoding="utf-8")
        return json.loads(text)

    def delete(self, names) -> None:
        for name in names:
            (self.local / name).unlink(missing_ok=True)
            if self.remote:
                fs.remove(fs.join(self.remote, name), "--out")

    def publish(self, name: str, keep_local: bool = True) -> None:
        """Upload the local file ``name`` (no-op for a local build)."""
        if self.remote:
            fs.upload(self.local / name, fs.join(self.remote, name), "--out")
            if not keep_local:
                (self.local / name).unlink(missing_ok=True)
