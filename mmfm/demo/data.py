"""The demo's data: emoji shards via the ``noto_emoji`` recipe, the held-out folder tree, and VQA pairs.

Everything here goes through the library: shards are built by ``mmfm.data.shards.build`` (the noto_emoji
recipe for images + names, the ``vqa`` source for question/answer shards), and the held-out images are
exported as a plain image folder (one subfolder per emoji group) so the zero-shot stage runs exactly what
``mmfm zeroshot FOLDER`` runs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from mmfm.config import atomic_dir, atomic_write, atomic_write_text

SKIN_TONES = ("none", "light", "medium-light", "medium", "medium-dark", "dark", "mixed")


def slug(text: str) -> str:
    """'Smileys & Emotion' -> 'smileys_emotion' (a safe folder name)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def subsample_emoji_test(src: Path, dst: Path, every: int) -> Path:
    """A copy of emoji-test.txt keeping every ``every``-th emoji *with all its skin-tone variants* (all group
    headers kept), so a quick run still sees every group and the skin-tone bias table still has emoji that exist
    in all six tones."""
    from mmfm.data.shards.emoji import base_name, line_name

    lines, order = [], {}
    for line in src.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.strip() and not line.startswith("#"):
            name = line_name(line)
            base = base_name(name) if name else line
            idx = order.setdefault(base, len(order))
            if idx % every:
                continue
        lines.append(line)
    atomic_write_text(dst, "".join(lines))
    return dst


def build_emoji_shards(out: Path, *, size: int, holdout: float, limit: int | None, subsample: int = 1,
                       shard_size: int = 1000, workers: int = 2, progress: bool = True) -> dict:
    """``mmfm shards build --recipe noto_emoji`` in-process; resumes after the last complete shard."""
    from mmfm.data.shards.build import build
    from mmfm.data.shards.recipes import resolve_options

    data: dict = {"image": {"size": size}, "holdout": holdout, "workers": workers, "shard_size": shard_size}
    if limit:
        data.setdefault("source", {})["limit"] = limit
    if subsample > 1:
        src = Path(resolve_options("noto_emoji").source.path)
        data.setdefault("source", {})["path"] = str(subsample_emoji_test(src, out / "emoji-test.subset.txt", subsample))
    opts = resolve_options("noto_emoji", None, data)
    resume = (out / "train").is_dir() or (out / "heldout").is_dir()
    manifests = build(opts, out, resume=resume, overwrite=False, progress=progress)
    return {split: {"samples": m["total_samples"], "shards": len(m["shards"]), "failures": m["failures"]}
            for split, m in manifests.items()}


def iter_samples(folder: Path) -> Iterator[dict]:
    """Read a shard folder (our own output) -> {key, image bytes, ext, txt, meta, cls}, via the shard library's
    own tar reader."""
    from mmfm.data.shards.inspect import iter_samples as iter_tar, list_shards

    for tar_path in list_shards(folder)[0]:
        for s in iter_tar(tar_path):
            ext = next((e for e in ("jpg", "png", "webp") if e in s), None)
            if ext is None:
                continue
            meta = json.loads(s["json"]) if "json" in s else {}
            yield {"key": s["__key__"], "image": s[ext], "ext": ext, "txt": s.get("txt", b"").decode("utf-8"),
                   "meta": meta, "cls": int(s["cls"]) if "cls" in s else None}


def load_split(folder: Path) -> list[dict]:
    return list(iter_samples(folder))


def export_images(samples: list[dict], root: Path, *, by_group: bool) -> list[Path]:
    """Write each sample's image bytes to ``root/[group]/KEY.ext`` (atomic per file); returns the paths."""
    paths = []
    for s in samples:
        sub = root / slug(s["meta"].get("group", "unknown")) if by_group else root
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{s['key']}.{s['ext']}"
        if not path.is_file():
            atomic_write(path, s["image"])
        paths.append(path)
    return paths


def write_zeroshot_folder(samples: list[dict], classes: list[str], root: Path) -> tuple[Path, Path]:
    """Held-out images as ``root/images/<group>/KEY.jpg`` plus ``root/classnames.txt`` (folder -> group name)."""
    images = root / "images"
    export_images(samples, images, by_group=True)
    # scan_folder sorts class folders by name; the classnames file follows that order. Only groups with
    # held-out images get a folder (the full demo holds out emoji of all 9 groups).
    present = {s["meta"].get("group", "unknown") for s in samples}
    order = sorted((g for g in classes if g in present), key=slug)
    names = root / "classnames.txt"
    atomic_write_text(names, "".join(f"{g}\n" for g in order))
    return images, names


def build_caption_shards(samples: list[dict], image_paths: list[Path], template: str, out: Path, *, size: int,
                         shard_size: int = 1000, workers: int = 2, progress: bool = True) -> dict:
    """Shards pairing each image with a caption made from its metadata (``template.format(**meta)``, e.g.
    ``"a {group} emoji"``), through the builder's JSONL source. Used as a second, weighted training source.
    Rows are shuffled (seeded) so that consecutive samples are not all of one group."""
    import random

    from mmfm.data.shards.build import build
    from mmfm.data.shards.recipes import resolve_options

    table = out.parent / f"{out.name}.jsonl"
    rows = [{"image": str(Path(p).resolve()), "caption": template.format(**s["meta"]), "key": s["key"]}
            for s, p in zip(samples, image_paths)]
    random.Random(0).shuffle(rows)
    atomic_write_text(table, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    data = {"source": {"type": "jsonl", "path": str(table), "extra_columns": ["key"]},
            # lossless: the decoded pixels equal the name shards' (same JPEG decoded), so a locked tower's
            # cached features for an image serve both sources
            "image": {"size": size, "resize_mode": "no", "format": "png"},
            "dedup": False, "workers": workers, "shard_size": shard_size}
    opts = resolve_options(None, None, data)
    resume = out.is_dir() and any(out.glob("*.tar"))
    m = build(opts, out, resume=resume, overwrite=False, progress=progress)[""]
    return {"samples": m["total_samples"], "shards": len(m["shards"]), "template": template}


# ----------------------------------------------------------------------------- VQA pairs
QUESTIONS = {
    "group": "which group is this emoji in?",
    "flag": "is this a flag?",
    "skin": "what skin tone is this?",
}


def qa_pairs(meta: dict) -> list[dict]:
    """Questions drawn from an emoji's metadata, with VQAv2-style answer lists (10 identical answers).

    Answers are written the way VQAv2 annotations are, already normalised by the official evaluation's rules
    ("medium-dark" -> "medium dark"); "none" would normalise to "0", so an emoji without a skin tone answers
    "no skin tone"."""
    from mmfm.data.vqa_answers import normalize_answer

    group = meta.get("group", "")
    tone = meta.get("skin_tone") or "none"
    flag = bool(meta.get("is_flag", group == "Flags"))
    tone = "no skin tone" if tone == "none" else tone
    pairs = [
        {"kind": "group", "question": QUESTIONS["group"], "answer": group.lower(), "answer_type": "other"},
        {"kind": "flag", "question": QUESTIONS["flag"], "answer": "yes" if flag else "no", "answer_type": "yes/no"},
        {"kind": "skin", "question": QUESTIONS["skin"], "answer": tone, "answer_type": "other"},
    ]
    for p in pairs:
        p["answer"] = normalize_answer(p["answer"])
    return pairs


def _keep_flag_question(meta: dict, share: float) -> bool:
    """Ask "is this a flag?" of every flag and of a deterministic ``share`` of the other emoji, so that yes and
    no are about equally frequent (as VQAv2 balances its yes/no questions); otherwise "no" alone scores 93%."""
    import zlib
    if meta.get("is_flag"):
        return True
    return zlib.crc32(meta.get("base_name", meta.get("name", "")).encode()) % 10_000 < share * 10_000


def write_vqa_json(samples: list[dict], image_paths: list[Path], path: Path) -> list[dict]:
    """A LAVIS-style VQA list ``[{image, question, answers, answer_type, question_id}]`` for the vqa source."""
    flags = sum(1 for s in samples if s["meta"].get("is_flag"))
    share = flags / max(len(samples) - flags, 1)
    records = []
    for s, img in zip(samples, image_paths):
        for qa in qa_pairs(s["meta"]):
            if qa["kind"] == "flag" and not _keep_flag_question(s["meta"], share):
                continue
            # absolute: the VQA shard builder resolves relative paths against the json's folder, not the cwd
            records.append({"image": str(Path(img).resolve()), "question": qa["question"],
                            "answers": [qa["answer"]] * 10,
                            "answer_type": qa["answer_type"], "question_id": f"{s['key']}_{qa['kind']}",
                            "kind": qa["kind"]})
    atomic_write_text(path, json.dumps(records, ensure_ascii=False))
    return records


def build_vqa_shards(vqa_json: Path, out: Path, *, size: int, workers: int = 2, progress: bool = True) -> dict:
    """The ``vqa`` source of the shard builder on our generated question list."""
    from mmfm.data.shards.build import build
    from mmfm.data.shards.recipes import resolve_options

    data = {"source": {"type": "vqa", "path": str(vqa_json)},
            "image": {"size": size, "resize_mode": "border", "format": "jpg", "quality": 95},
            "dedup": False, "workers": workers, "shard_size": 4000}
    opts = resolve_options(None, None, data)
    resume = out.is_dir() and any(out.glob("*.tar"))
    m = build(opts, out, resume=resume, overwrite=False, progress=progress)[""]
    return {"samples": m["total_samples"], "shards": len(m["shards"]), "failures": m["failures"]}


def train_caption_tokenizer(texts: list[str], folder: Path, vocab_size: int = 2000) -> Path:
    """A byte-level BPE tokenizer (transformers folder) fitted to the training captions and questions.

    Emoji names use ~2,000 distinct words; a 2k vocabulary instead of a 30k one makes the decoder's output layer
    15x cheaper on the CPU, and byte-level BPE still spells any word (held-out names included) and decodes
    back to exactly the text it encoded ("flag: Germany", "medium-dark")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    with atomic_dir(folder) as tmp:
        fast.save_pretrained(str(tmp))
    return folder
