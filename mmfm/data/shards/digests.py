"""The builder's exact-dedup index: image digests on disk (sqlite), not in a set for the whole build.

Memory stays flat with the dataset: new digests wait in a bounded in-memory batch, then go into
``OUT/.dedup.sqlite`` (``DigestIndex.NAME``) in one transaction. Each row is ``(digest, input index)`` and the
index records ``covered``: every input before that position has its digest committed. ``--resume`` reopens the
file, drops the rows of inputs that will be replayed (index >= restart) and adds only what the file missed
(from the ``image_sha256`` of shard stats past ``covered``), so nothing is reloaded into memory. For an
``s3://`` build the file lives in the local staging folder and is rebuilt from the stats, one shard at a time.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

BATCH = 8192   # digests held in memory before they are written to the index


class DigestIndex:
    NAME = ".dedup.sqlite"

    def __init__(self, folder: Path, batch: int = BATCH):
        self.path = Path(folder) / self.NAME
        self.batch = batch
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS digest (sha BLOB PRIMARY KEY, idx INTEGER NOT NULL) "
                         "WITHOUT ROWID")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self._pending: dict[bytes, int] = {}
        self._position = self.covered

    @property
    def covered(self) -> int:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'covered'").fetchone()
        return row[0] if row else 0

    def absorb(self, pairs: Iterable) -> None:
        """Add the ``[index, hex digest]`` pairs of one complete shard's stats that the file missed (a kill
        between a shard's stats and the next flush, or a fresh staging folder for an ``s3://`` build)."""
        covered = self.covered
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO digest VALUES (?, ?)",
                                 ((bytes.fromhex(h), i) for i, h in pairs if i >= covered))

    def seed(self, shards: Iterable[Iterable]) -> None:
        """Digests from outside this build (``--retry-failures``: the previous build's), per shard ``[index, hex]``
        pairs; kept at index -1, before every input, so no restart forgets them."""
        for pairs in shards:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR IGNORE INTO digest VALUES (?, -1)",
                                     ((bytes.fromhex(h),) for _, h in pairs))

    def restart_at(self, restart: int) -> None:
        """The build (re)starts at input ``restart``: forget the digests of that input and later ones."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM digest WHERE idx >= ?", (restart,))
            self._set_covered(restart)
        self._position = restart

    def add(self, digest: str, index: int) -> bool:
        """True when ``digest`` is new (and remembers it for input ``index``); False for a duplicate."""
        key = bytes.fromhex(digest)
        if key in self._pending or self._db.execute("SELECT 1 FROM digest WHERE sha = ?", (key,)).fetchone():
            return False
        self._pending[key] = index
        if len(self._pending) >= self.batch:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the pending digests; every input seen so far is then covered."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO digest VALUES (?, ?)", self._pending.items())
            self._set_covered(self._position)
        self._pending.clear()

    def seen(self, index: int) -> None:
        """Input ``index`` is handled (its digest, if any, is added): the next flush covers it."""
        self._position = index + 1

    def _set_covered(self, position: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('covered', ?)", (position,))

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM digest").fetchone()[0] + len(self._pending)
