"""Attribute-balanced training data (``data.balance: {key, mode, counts}``), the data-side mitigation of a skew.

The group of a sample is its json field ``key`` (a sample without it is in the group ``(missing)``, as in
``mmfm shards audit``). Group sizes come from ``counts`` (an ``audit.json`` written by ``mmfm shards audit``) or
from one streaming pass over the training sources' json before training (every rank computes the same counts).

* ``mode: sample``: a sample of group g is kept with probability ``min_g' n_g' / n_g``, decided by a hash of
  (seed, epoch, source, reader, pass, shard file name, key): every group contributes about as many samples to a pass as
  the smallest one. The decision depends on nothing else, so the filtered stream is the same on every run; the
  loader counts its resume position in that filtered stream, so resume stays exact, and each rank reads its own
  shards as before. Readers loop over their shards for as many passes as the epoch's quota needs. (With
  ``data.resampled`` a sample drawn twice gets the same coin: the pass is not part of it.)
* ``mode: weight``: every sample is kept; it carries ``weight = N / (G n_g)`` (mean 1 over the data), which the
  contrastive task uses as a per-sample loss weight.

Both modes add ``group`` (the group's index in ``groups``, sorted) to each sample, for the task's fairness
regulariser (``task.contrastive.fairness_weight``).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError

from .shards.audit import MISSING, sample_group, sample_meta

__all__ = ["Balancer", "group_counts", "read_counts", "make_balancer"]


def group_counts(urls: list[str], key: str) -> dict[str, int]:
    """Samples per group of the json field ``key`` over the shards ``urls`` (one streaming pass)."""
    from .sources import read_samples
    counts: Counter = Counter()
    for s in read_samples(urls):
        counts[sample_group(sample_meta(s), "", key)] += 1
    return dict(counts)


def read_counts(path: str, key: str) -> dict[str, int]:
    """The group sizes of an ``audit.json`` (``mmfm shards audit``) for the attribute ``key``."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        if report["attribute"] != key:
            raise ConfigError(f"data.balance.counts: {path} audits '{report['attribute']}', not '{key}'")
        return {g: int(v["n"]) for g, v in report["groups"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"data.balance.counts: {path} is not an audit.json ({e})") from None


def _coin(seed_parts: tuple, raw: dict) -> float:
    """A uniform number in [0, 1) fixed by (seed parts, shard file name, key): the same wherever the shards are
    stored or mounted. blake2b, not crc32: a CRC of near-identical keys is far from uniform in its high bits."""
    name = str(raw.get("__url__", "")).rsplit("/", 1)[-1]
    digest = hashlib.blake2b(repr((*seed_parts, name, raw.get("__key__"))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


class Balancer:
    """Picklable: the per-group keep probabilities and loss weights, and the filter over a raw stream."""

    def __init__(self, key: str, mode: str, counts: dict[str, int]):
        counts = {g: c for g, c in counts.items() if c > 0}
        if len(counts) < 2:
            raise ConfigError(f"data.balance.key: '{key}' has {len(counts)} group(s) in the training data "
                              f"({counts}); nothing to balance")
        self.key, self.mode, self.counts = key, mode, dict(sorted(counts.items()))
        self.groups = list(self.counts)
        low, total = min(self.counts.values()), sum(self.counts.values())
        self.keep = {g: low / c for g, c in self.counts.items()}
        self.weight = {g: total / (len(self.counts) * c) for g, c in self.counts.items()}

    def group(self, raw: dict) -> str:
        g = sample_group(sample_meta(raw), "", self.key)
        return g if g in self.counts else MISSING

    def filter(self, stream: Iterator[dict], seed_parts: tuple, expected: list[float] | None = None
               ) -> Iterator[dict]:
        """``mode: sample``: the samples kept (a deterministic coin per sample); otherwise ``stream`` unchanged.
        ``expected[0]`` (when given) grows by each sample's keep probability: how many samples a pass should
        keep, which tells a pass that kept none by chance from a source that can keep none."""
        if self.mode != "sample":
            yield from stream
            return
        for raw in stream:
            p = self.keep.get(self.group(raw), 1.0)
            if expected is not None:
                expected[0] += p
            if _coin(seed_parts, raw) < p:
                yield raw

    def annotate(self, out: dict, raw: dict) -> dict:
        g = self.group(raw)
        out["group"] = self.groups.index(g) if g in self.groups else -1
        if self.mode == "weight":
            out["weight"] = float(self.weight.get(g, 1.0))
        return out


def make_balancer(cfg, sources) -> Balancer:
    """From ``data.balance`` and the resolved training sources."""
    counts = read_counts(cfg.counts, cfg.key) if cfg.counts else group_counts(
        [s.url for src in sources for s in src.shards], cfg.key)
    return Balancer(cfg.key, cfg.mode, counts)
