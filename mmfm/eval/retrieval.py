"""Image <-> text retrieval recall@k, the way CLIP papers and CLIP_benchmark count it.

DATA is one of
* a shard folder (``manifest.json`` + tars), a ``.tar`` file or a brace pattern: captions come from
  the sample's json ``captions`` list, else its ``txt``;
* a CSV or JSONL file with an image path column and caption(s): ``captions`` (a list) or
  ``caption``/``text``; rows that repeat an image path add captions to it. Relative paths are resolved
  against the file's folder.

Several captions per image: text->image counts every caption as a query whose single positive is
its image; image->text counts an image as a hit when *any* of its captions is in the top k.
(CLIP_benchmark calls these ``image_retrieval_recall@k`` and ``text_retrieval_recall@k``.)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.data import IterableDataset

from mmfm.config import ConfigError, InputError
from mmfm.data import fs
from mmfm.data.decode import DEFAULT_MAX_PIXELS, decode_image
from mmfm.data.transforms import eval_transform
from mmfm.models.device import model_device

from .embedding import (autocast, default_workers, effective_precision, encode_texts, load_clip, long_caption_note,
                        split_transform)
from .records import SHARD_IMAGE_KEYS, TableData, is_shard_source, read_table, shard_urls
from .result import EvalResult, backend


def retrieval_source(data: str, image_key: str | None = None, caption_key: str | None = None):
    """What ``embed_share`` reads: a shard source (after the training preflight, so a missing or truncated shard
    fails before a model loads) or the ``TableData`` of a CSV/JSONL file."""
    if is_shard_source(data):
        shard_urls(data)
        return str(data)
    return read_table(data, image_key, caption_key)


# ----------------------------------------------------------------------------- datasets (picklable)
class TableImages:
    def __init__(self, paths, transform, max_pixels):
        self.paths, self.transform, self.max_pixels = paths, transform, max_pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return {"index": i, "image": self.transform(decode_image(self.paths[i], self.max_pixels))}
        except Exception as e:  # noqa: BLE001 - reported and skipped
            return {"index": i, "image": None, "reason": f"{type(e).__name__}: {e}", "name": self.paths[i]}


class ShardSample:
    """webdataset map stage: raw sample -> {key, image tensor or None, captions, reason}."""

    def __init__(self, transform, max_pixels):
        self.transform, self.max_pixels = transform, max_pixels

    def __call__(self, s):
        name = f"{s.get('__url__', '?')}:{s.get('__key__')}"
        caps = []
        if "json" in s:
            meta = json.loads(s["json"])
            caps = [c for c in meta.get("captions") or [] if isinstance(c, str) and c.strip()]
        if not caps and "txt" in s:
            caps = [s["txt"].decode("utf-8").strip()]
        key = next((k for k in SHARD_IMAGE_KEYS if k in s), None)
        out = {"name": name, "captions": caps, "image": None}
        if key is None or not caps:
            out["reason"] = "no image" if key is None else "no caption"
            return out
        try:
            out["image"] = self.transform(decode_image(s[key], self.max_pixels))
        except Exception as e:  # noqa: BLE001
            out["reason"] = f"{type(e).__name__}: {e}"
        return out


def collate_list(items):
    return items


class ShardPairs(IterableDataset):
    """Shard samples in reading order as ``{"pos", ...ShardSample}``, an IterableDataset for a DataLoader. Reader
    ``g`` of ``world x workers`` (``g = rank x workers + worker``) keeps positions ``g, g + readers, ...`` below
    ``limit`` and decodes only those: every sample once in all, whatever the number of ranks and workers."""

    def __init__(self, urls: list[str], sample_fn, rank: int = 0, world: int = 1, limit: int | None = None):
        self.urls, self.sample_fn, self.rank, self.world, self.limit = urls, sample_fn, rank, world, limit

    def __iter__(self):
        from itertools import islice

        from torch.utils.data import get_worker_info

        from mmfm.data.sources import read_samples
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = self.rank * workers + worker, self.world * workers
        for pos, s in enumerate(islice(read_samples(self.urls), self.limit)):
            if pos % readers == reader:
                yield dict(self.sample_fn(s), pos=pos)


def _image_batches(data, transform, *, batch_size, workers, max_pixels, max_samples, share=(0, 1)):
    """Lists of ``{"pos", "image" or None, "captions", "name"[, "reason"]}``: the items ``share=(rank, world)``
    owns (positions ``rank, rank + world, ...`` of the first ``max_samples``, in reading order)."""
    from torch.utils.data import DataLoader
    rank, world = share
    kw = dict(batch_size=batch_size, num_workers=workers, collate_fn=collate_list, pin_memory=False)
    if workers:
        kw["prefetch_factor"] = 4
    if isinstance(data, TableData):
        n = len(data.paths) if max_samples is None else min(max_samples, len(data.paths))
        mine = list(range(rank, n, world))
        ds = TableImages([data.paths[i] for i in mine], transform, max_pixels)
        for batch in DataLoader(ds, shuffle=False, **kw):
            yield [dict(b, pos=mine[b["index"]], captions=data.captions[mine[b["index"]]],
                        name=data.paths[mine[b["index"]]]) for b in batch]
    else:
        ds = ShardPairs(shard_urls(data), ShardSample(transform, max_pixels), rank, world, max_samples)
        yield from DataLoader(ds, **kw)


def embed_share(model, data, *, share=(0, 1), batch_size=64, workers=None, precision="auto",
                max_pixels=DEFAULT_MAX_PIXELS, max_samples=None, progress=True) -> dict:
    """This rank's share (``share=(rank, world)``) of the retrieval set: ``{"pos": (I,) reading-order position
    of each image, "name": (I,) its ``url:key`` (shards) or path (tables), "image": (I, D), "text": (T, D),
    "owner": (T,) position of each caption's image, "skipped": [...]}``; I may be 0."""
    import torch
    from tqdm.auto import tqdm
    device = model_device(model)
    workers = default_workers(device) if workers is None else workers
    feats, captions, owner, skipped, pos, names = [], [], [], [], [], []
    with torch.inference_mode(), autocast(device, precision):
        transform, finish = split_transform(eval_transform(model), device)   # uint8 + GPU normalise on CUDA
        batches = _image_batches(data, transform, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                                 max_samples=max_samples, share=share)
        for batch in tqdm(batches, desc="retrieval images", unit="batch", disable=not progress):
            ok = [b for b in batch if b["image"] is not None]
            skipped += [{"path": b["name"], "reason": b["reason"]} for b in batch if b["image"] is None]
            if not ok:
                continue
            img = torch.stack([b["image"] for b in ok]).to(device, non_blocking=True)
            if finish is not None:
                img = finish(img)
            feats.append(model.encode_image(img, normalize=True).float().cpu())
            for b in ok:
                captions += b["captions"]
                owner += [b["pos"]] * len(b["captions"])
                pos.append(b["pos"])
                names.append(b["name"])
    text = encode_texts(model, captions, precision=precision, progress=progress, desc="retrieval captions")
    return {"pos": torch.tensor(pos, dtype=torch.long), "name": names,
            "image": torch.cat(feats) if feats else torch.zeros(0, 0),
            "text": text, "owner": torch.tensor(owner, dtype=torch.long), "skipped": skipped,
            **long_caption_note(model, captions)}


def merge_shares(shares: list[dict], source="") -> tuple:
    """Every rank's ``embed_share`` -> ``(image (I, D), text (T, D), owner (T,) image index, skipped)``, images
    in reading order (the same as one process reading everything)."""
    import torch
    skipped = [x for s in shares for x in s["skipped"]]
    shares = [s for s in shares if len(s["pos"])]
    if not shares:
        raise ConfigError(f"no image in {source} could be decoded ({len(skipped)} skipped)")
    pos = torch.cat([s["pos"] for s in shares])
    owner = torch.cat([s["owner"] for s in shares])
    order, by_owner = torch.argsort(pos), torch.argsort(owner, stable=True)
    row = {p: i for i, p in enumerate(pos[order].tolist())}           # position -> row of the image matrix
    image = torch.cat([s["image"] for s in shares])[order]
    text = torch.cat([s["text"] for s in shares])[by_owner]
    return image, text, torch.tensor([row[p] for p in owner[by_owner].tolist()], dtype=torch.long), skipped


def embed_pairs(model, data, *, batch_size=64, workers=None, precision="auto", max_pixels=DEFAULT_MAX_PIXELS,
                max_samples=None, progress=True):
    """Image embeddings (I, D), caption embeddings (T, D), the image index of each caption, skipped list."""
    share = embed_share(model, data, batch_size=batch_size, workers=workers, precision=precision,
                        max_pixels=max_pixels, max_samples=max_samples, progress=progress)
    return merge_shares([share], getattr(data, "source", data))


# ----------------------------------------------------------------------------- metrics
def retrieval_ranks(image_emb, text_emb, text_owner, kmax: int = 10, chunk: int = 1024) -> tuple:
    """Per query: ``(i2t (I,), t2i (T,))``; ``i2t[i]`` is the 0-based rank of the first own caption among image
    i's top ``kmax`` captions (``kmax`` when none), ``t2i[t]`` the number of images scored above caption t's own."""
    import torch
    n_img = image_emb.shape[0]
    t2i_rank = torch.empty(len(text_emb), dtype=torch.long)
    for s in range(0, len(text_emb), chunk):
        scores = text_emb[s:s + chunk] @ image_emb.T                      # (t, I)
        pos = scores.gather(1, text_owner[s:s + chunk, None])
        t2i_rank[s:s + chunk] = (scores > pos).sum(1)                       # 0 = best
    i2t_best = torch.full((n_img,), n_img + len(text_emb), dtype=torch.long)
    for s in range(0, n_img, chunk):
        scores = image_emb[s:s + chunk] @ text_emb.T                       # (i, T)
        top = scores.topk(min(kmax, scores.shape[1]), dim=1).indices      # (i, kmax)
        hit = text_owner[top] == torch.arange(s, s + len(scores))[:, None]
        first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((len(scores),), kmax))
        i2t_best[s:s + chunk] = first
    return i2t_best, t2i_rank


def recall_at_k(image_emb, text_emb, text_owner, ks=(1, 5, 10), chunk: int = 1024) -> dict:
    """R@k both ways from normalised embeddings; ``text_owner[t]`` is the image index of caption t."""
    i2t_best, t2i_rank = retrieval_ranks(image_emb, text_emb, text_owner, max(ks), chunk)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t_best < k).float().mean())
    for k in ks:
        out[f"text_to_image_R@{k}"] = float((t2i_rank < k).float().mean())
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def retrieval_evaluate(model, data, *, image_key=None, caption_key=None, batch_size=64, workers=None,
                       device=None, precision="auto", ks=(1, 5, 10), max_samples=None,
                       max_pixels=DEFAULT_MAX_PIXELS, progress=True) -> EvalResult:
    """R@1/5/10 image->text and text->image on shards or CSV/JSONL. ``metrics``: the recalls and their mean;
    ``meta``: model, data, format, image/caption/skipped counts, device, precision, time."""
    t0 = time.perf_counter()
    src = str(data)
    if not (fs.is_remote(src) or Path(src).exists() or "{" in src):
        raise InputError(f"retrieval data not found: {src}")
    source = retrieval_source(src, image_key, caption_key)
    model, ckpt = load_clip(model, device)
    was_training = model.training
    model.eval()
    try:
        share = embed_share(model, source, batch_size=batch_size, workers=workers, precision=precision,
                            max_pixels=max_pixels, max_samples=max_samples, progress=progress)
        img, txt, owner, skipped = merge_shares([share], getattr(source, "source", source))
    finally:
        model.train(was_training)
    dev = model_device(model)
    meta = {"task": "zeroshot_retrieval", "backend": backend(), "model": ckpt or type(model).__name__, "data": src,
            "format": "shards" if isinstance(source, str) else Path(src).suffix.lstrip("."),
            "n_images": int(img.shape[0]), "n_captions": int(txt.shape[0]), "n_skipped": len(skipped),
            "skipped": skipped[:1000], "device": str(dev), "precision": effective_precision(dev, precision),
            "long_captions": share["long_captions"], "texts_cut": share["texts_cut"],
            "seconds": round(time.perf_counter() - t0, 3)}
    return EvalResult(metrics=recall_at_k(img, txt, owner, ks), meta=meta)
