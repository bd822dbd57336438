"""Decoding settings and batched generation for captioners and VQA, plus the alt-text conventions.

* :func:`generation_kwargs` maps :class:`mmfm.config.caption.GenerateConfig` to transformers' ``generate``
  arguments (greedy, beam search, sampling; min/max new tokens, no-repeat n-grams, repetition penalty,
  KV cache on/off).
* :func:`caption_images` captions paths / PIL images / tensors in batches; an image that fails to decode gets
  an ``error`` entry and the rest still get captions.
* :func:`answer_questions` generates VQA answers after ``question: ... answer:``; :func:`rank_answers`
  scores a given answer list by the log-likelihood of each answer.
* :func:`to_alt_text` applies the alt-text conventions: no "an image of" prefix, a length limit at a word
  boundary, sentence case.
* Trust: every caption from :func:`caption_images` carries ``confidence`` (the mean log-probability of its
  tokens and eos under the model, :func:`caption_confidence`) and ``degenerate`` (None, or why it cannot be
  trusted: empty, one_word, repetition, repeats_prompt, low_confidence; :func:`degenerate_reason`); with
  ``alt_text.fallback`` set, a degenerate caption's alt text is the fallback.
The settings a model was trained with live in its checkpoint (``config.yaml``'s ``generate:`` section);
``mmfm.load`` attaches them as ``model.generate_config`` (:func:`stored_generate`), and :func:`merge_settings`
applies a shipped preset (``configs/generate/``, :func:`load_preset`) and explicit overrides on top.
No command-line parsing here: ``mmfm.commands.decoding`` maps flags to :func:`merge_settings`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import torch

from mmfm.config import ConfigError
from mmfm.config.caption import PERSON_ATTRIBUTES, AltTextConfig, GenerateConfig
from mmfm.data.transforms import eval_transform
from mmfm.models.device import model_device

__all__ = ["generation_kwargs", "stored_generate", "settings_dict", "to_alt_text", "clean_caption", "caption_images",
           "caption_tensors", "answer_questions", "rank_answers", "answer_rows", "decode_images", "load_preset", "preset_names",
           "merge_settings", "caption_confidence", "degenerate_reason", "repetition_loop", "trust_fields",
           "limit_person_attributes", "keep_person_attributes"]

_HF_FIELDS = ("num_beams", "do_sample", "temperature", "top_p", "top_k", "min_new_tokens", "max_new_tokens",
              "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "use_cache")
_PREFIX = re.compile(
    r"^\s*(?:(?:this|it)\s+is\s+|there\s+is\s+)?(?:an?\s+|the\s+)?(?:close[\s-]?up\s+)?"
    r"(?:image|picture|photo|photograph|pic|snapshot|screenshot)\s+(?:that\s+shows|showing|of|with)\s+",
    re.IGNORECASE)
_DANGLING = {"a", "an", "the", "and", "or", "with", "of", "on", "in", "at", "to", "for", "from", "by", "is",
             "are", "while", "near", "under", "over"}

# person attributes (AltTextConfig.person_attributes): what is removed or made neutral when one is not allowed
_PERSON = (r"(?:person|people|man|men|woman|women|boy|boys|girl|girls|lady|ladies|gentleman|gentlemen|guy|guys|"
           r"child|children|kid|kids|couple|individual|adult|adults)")
_TONE = r"(?:very\s+)?(?:light|medium-light|medium light|medium|medium-dark|medium dark|dark|fair|pale|olive|brown|tan)"
_SKIN = [re.compile(rf"\s*(?:[:,]\s*)?(?:\bwith\s+(?:an?\s+)?)?{_TONE}\s+skin(?:\s+tone)?\b", re.I),
         re.compile(rf"\b{_TONE}[- ]skinned\s+", re.I), re.compile(rf"\b{_TONE}\s+skin\s+tone\b\s*", re.I)]
_AGE = [re.compile(rf"\b(?:young|old|older|elderly|aged|middle-aged|middle aged|teenage|adolescent|senior|"
                   rf"\d+[- ]year[- ]old)\s+(?=(?:[\w-]+\s+){{0,2}}{_PERSON}\b)", re.I)]
_AGE_WORDS = {"teenager": "person", "teenagers": "people", "teen": "person", "teens": "people"}
_GENDER_WORDS = {"man": "person", "woman": "person", "men": "people", "women": "people", "boy": "child",
                 "girl": "child", "boys": "children", "girls": "children", "lady": "person", "ladies": "people",
                 "gentleman": "person", "gentlemen": "people", "guy": "person", "guys": "people", "he": "they",
                 "she": "they", "his": "their", "her": "their", "him": "them", "husband": "partner",
                 "wife": "partner", "father": "parent", "mother": "parent", "son": "child", "daughter": "child",
                 "brother": "sibling", "sister": "sibling", "male": "", "female": ""}


def _swap_words(text: str, table: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        word = m.group(0)
        new = table[word.lower()]
        return new[:1].upper() + new[1:] if new and word[0].isupper() else new
    return re.sub(r"\b(?:" + "|".join(table) + r")\b", sub, text, flags=re.I)


def limit_person_attributes(text: str, allowed) -> str:
    """Remove what ``text`` states about a person's skin tone, gender or age unless ``allowed`` names it
    (English captions: skin-tone phrases dropped, gendered words made neutral, age adjectives before a person
    word dropped), then tidy the spaces and the articles ("an elderly man" -> "a person" with neither)."""
    allowed = set(allowed)
    if "skin_tone" not in allowed:
        for pattern in _SKIN:
            text = pattern.sub(" " if pattern is _SKIN[2] else "", text)
    if "age" not in allowed:
        text = _swap_words(_AGE[0].sub("", text), _AGE_WORDS)
    if "gender" not in allowed:
        text = _swap_words(text, _GENDER_WORDS)
        text = _swap_words(text, {"they is": "they are", "they was": "they were", "they has": "they have"})
    text = re.sub(r"\s*[,:]\s*(?=[,.:;!?]|$)", "", " ".join(text.split()))    # a clause left empty
    text = re.sub(r"\b([Aa])n\s+(?=[^aeiouAEIOU\W])", r"\1 ", text)
    return re.sub(r"\b([Aa])\s+(?=[aeiouAEIOU])", r"\1n ", text)


def keep_person_attributes(text: str, allowed) -> str:
    """``text`` with only the ``allowed`` person attributes stated (unchanged when every one is allowed)."""
    if set(PERSON_ATTRIBUTES) - set(allowed):
        text = clean_caption(limit_person_attributes(text, allowed))
    return text


# ---------------------------------------------------------------- settings
def generation_kwargs(gen: GenerateConfig, **overrides) -> dict[str, Any]:
    """transformers GenerationConfig fields for ``gen`` (overrides win). Beam search needs ``num_beams > 1``;
    sampling needs ``do_sample: true`` (temperature/top-p/top-k only apply then)."""
    kw = {f: getattr(gen, f) for f in _HF_FIELDS}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if not kw["do_sample"]:
        for f in ("temperature", "top_p", "top_k"):
            kw.pop(f)
    if kw.get("no_repeat_ngram_size", 0) == 0:
        kw.pop("no_repeat_ngram_size", None)
    return kw


_DEFAULT = object()


def stored_generate(model_or_spec, default=_DEFAULT) -> GenerateConfig | None:
    """The decoding settings stored with a captioner (``config.yaml``'s ``generate:``; float checkpoints, run
    dirs and int8 folders alike). ``model_or_spec``: a model from ``mmfm.load`` (its ``generate_config``) or a
    path. Without stored settings: ``default``, or the GenerateConfig defaults when none is given."""
    if hasattr(model_or_spec, "parameters"):
        gen = getattr(model_or_spec, "generate_config", None)
    else:
        from mmfm.models.layout import read_config
        try:
            gen = read_config(model_or_spec).generate if model_or_spec else None
        except (ConfigError, OSError):
            gen = None
    if gen is not None:
        return gen
    return GenerateConfig() if default is _DEFAULT else default


def settings_dict(gen: GenerateConfig, model=None) -> dict:
    """The decoding settings as recorded in result JSONs (the prompt resolved against the model)."""
    d = dataclasses.asdict(gen)
    if model is not None:
        d["prompt"] = resolve_prompt(model, gen)
    return d


def resolve_prompt(model, gen: GenerateConfig | None) -> str:
    if gen is not None and gen.prompt is not None:
        return gen.prompt
    return getattr(model, "prompt", "") or ""


# ---------------------------------------------------------------- alt text
def clean_caption(text: str) -> str:
    """Whitespace collapsed, no space before punctuation (BPE decoders write "dog ." and "dog 's")."""
    text = " ".join(str(text).split())
    text = re.sub(r"\s+([.,!?;:%)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    return re.sub(r"\s+(['\u2019](?:s|re|ve|ll|d|m|t)\b)", r"\1", text, flags=re.IGNORECASE)


def to_alt_text(caption: str, alt: AltTextConfig | None = None) -> str:
    """Alt-text conventions: no "an image of"/"a photo of" prefix, at most ``max_chars`` (cut at a word,
    dangling function words dropped), sentence case with a final period."""
    alt = alt or AltTextConfig()
    text = clean_caption(caption)
    text = keep_person_attributes(text, alt.person_attributes)
    if alt.strip_prefix:
        stripped = _PREFIX.sub("", text, count=1)
        text = stripped if stripped.strip() else text
    if alt.max_chars and len(text) > alt.max_chars:
        cut = text[: alt.max_chars + 1]
        text = cut[: cut.rfind(" ")] if " " in cut else text[: alt.max_chars]
        words = text.rstrip(" ,;:-").split(" ")
        while len(words) > 1 and words[-1].lower() in _DANGLING:
            words.pop()
        text = " ".join(words).rstrip(" ,;:-")
        if alt.sentence_case and len(text) + 1 > alt.max_chars:     # leave room for the final period
            text = text[: alt.max_chars - 1].rstrip()
    if alt.sentence_case and text:
        text = text[0].upper() + text[1:]
        if text[-1].isalnum() or text[-1] in "\"')":
            text += "."
    return text


def decode_images(items: Sequence, transform, max_pixels: int | None = None) -> tuple[list, list]:
    """Paths / bytes / PIL images -> (tensors or None, error strings or None), one per item."""
    from mmfm.data.decode import DEFAULT_MAX_PIXELS, decode_image

    tensors, errors = [], []
    for item in items:
        try:
            if isinstance(item, torch.Tensor):
                tensors.append(item)
            else:
                img = item if hasattr(item, "convert") else decode_image(item, max_pixels or DEFAULT_MAX_PIXELS)
                tensors.append(transform(img.convert("RGB") if img.mode != "RGB" else img))
            errors.append(None)
        except Exception as e:  # noqa: BLE001 - reported per image, the rest go on
            tensors.append(None)
            errors.append(f"{type(e).__name__}: {e}")
    return tensors, errors


# ---------------------------------------------------------------- captioning
@torch.no_grad()
def caption_tensors(model, images: torch.Tensor, gen: GenerateConfig | None = None, prompt: str | None = None,
                    scores: list | None = None, **overrides) -> list[str]:
    """Raw captions for a batch of preprocessed images (B, 3, H, W); ``scores``: a list that receives each
    caption's confidence (:func:`caption_confidence`)."""
    gen = gen or GenerateConfig()
    prompt = resolve_prompt(model, gen) if prompt is None else prompt
    prefix = model.encode_plain(prompt) if prompt else []
    if gen.seed is not None and gen.do_sample:
        torch.manual_seed(gen.seed)
    images = images.to(model_device(model))
    kw = generation_kwargs(gen, **overrides)
    steps: list | None = [] if scores is not None and getattr(model, "library_loss", False) else None
    if steps is not None:                    # transformers captioners hand back each step's logits
        kw["step_logits"] = steps
    ids = model.generate_ids(images, [prefix] * images.shape[0], **kw)
    if scores is not None:
        scores.extend(confidence_from_logits(model, steps[0], ids) if steps else
                      caption_confidence(model, images, prefix, ids))
    return [clean_caption(model.decode(row)) for row in ids]


def _text_logits(out: dict) -> torch.Tensor:
    """The logits at the text positions (a prefix captioner's image positions in front dropped)."""
    return out["logits"][:, int(out.get("image_positions", 0)):]


def confidence_from_logits(model, logits: torch.Tensor, new_ids: torch.Tensor) -> list[float]:
    """:func:`caption_confidence` from the raw logits ``generate`` computed for each new token (B, T, V): the
    same mean log-probability up to and including eos, without a second pass (greedy or sampled rows)."""
    logp = torch.log_softmax(logits.float(), -1).gather(-1, new_ids[..., None].to(logits.device))[..., 0]
    is_eos = (new_ids == model.layout.eos).int()
    keep = (is_eos.cumsum(1) - is_eos) == 0                     # tokens up to and including the first eos
    return [float(v) for v in (logp * keep).sum(1) / keep.sum(1).clamp(min=1)]


# ---------------------------------------------------------------- trust: confidence and degenerate output
@torch.no_grad()
def caption_confidence(model, images: torch.Tensor, prefix: list[int], new_ids: torch.Tensor) -> list[float]:
    """The mean log-probability of each generated caption's tokens (up to and including its eos) given its
    image and prompt, scored by one teacher-forced pass (the same for greedy, beam and sampled captions)."""
    layout, rows = model.layout, []
    for row in new_ids.tolist():
        cut = row.index(layout.eos) + 1 if layout.eos in row else len(row)
        seq, n_prefix = model.sequence(prefix, None)
        rows.append(layout.right_pad(seq + row[:cut], n_prefix, len(seq) + len(row)))
    batch = {k: torch.stack([r[k] for r in rows]).to(images.device) for k in ("text_ids", "attention_mask", "labels")}
    tokens = model.image_tokens(images)
    out = model(image_tokens=tokens, text_ids=batch["text_ids"], attention_mask=batch["attention_mask"])
    logits = _text_logits(out)
    target = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    keep = target != -100
    return [float(v) for v in (logp * keep).sum(1) / keep.sum(1).clamp(min=1)]


def repetition_loop(words: list[str]) -> bool:
    """An n-gram (n <= 4) repeated three times in a row, or a 2+-gram that occurs three times anywhere."""
    from collections import Counter

    for n in range(1, 5):
        for i in range(len(words) - 3 * n + 1):
            if words[i: i + n] == words[i + n: i + 2 * n] == words[i + 2 * n: i + 3 * n]:
                return True
        if n >= 2:
            grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
            if grams and max(grams.values()) >= 3:
                return True
    return False


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", str(text or "").lower())


def degenerate_reason(caption: str | None, prompt: str = "", confidence: float | None = None,
                      min_confidence: float | None = None) -> str | None:
    """Why ``caption`` cannot be trusted as alt text, or None: ``empty``, ``one_word`` ("A."),
    ``repetition`` (a loop), ``repeats_prompt`` (only the prompt's words), ``low_confidence``."""
    words = _words(caption)
    if not words:
        return "empty"
    if len(words) == 1:
        return "one_word"
    if repetition_loop(words):
        return "repetition"
    if prompt and set(words) <= set(_words(prompt)):
        return "repeats_prompt"
    if min_confidence is not None and confidence is not None and confidence < min_confidence:
        return "low_confidence"
    return None


def caption_images(model, items: Sequence, gen: GenerateConfig | None = None, *, names: Sequence[str] | None = None,
                   batch_size: int | None = None, alt_text: bool = True, progress: bool = False,
                   max_pixels: int | None = None) -> list[dict]:
    """``[{"image": name, "caption": raw, "alt_text": ..., "error": None | str}]`` in input order."""
    from tqdm import tqdm

    gen = gen or GenerateConfig()
    names = list(names) if names is not None else [str(x) if isinstance(x, (str, os.PathLike)) else f"image_{n}"
                                                   for n, x in enumerate(items)]
    bs = int(batch_size or gen.batch_size)
    transform = eval_transform(model)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    bar = tqdm(total=len(items), desc="captioning", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(1, thread_name_prefix="mmfm-decode")   # decodes the next batch while the model runs
    starts = list(range(0, len(items), bs))
    pending = pool.submit(decode_images, list(items[:bs]), transform, max_pixels) if starts else None
    try:
        for n, start in enumerate(starts):
            chunk = list(items[start: start + bs])
            tensors, errors = pending.result()
            if n + 1 < len(starts):
                pending = pool.submit(decode_images, list(items[start + bs: start + 2 * bs]), transform, max_pixels)
            ok = [i for i, t in enumerate(tensors) if t is not None]
            scores: list[float] = []
            caps = caption_tensors(model, torch.stack([tensors[i] for i in ok]), gen, scores=scores) if ok else []
            by_index = dict(zip(ok, zip(caps, scores)))
            for i in range(len(chunk)):
                cap, conf = by_index.get(i, (None, None))
                results.append({"image": names[start + i], "caption": cap,
                                "alt_text": (to_alt_text(cap, gen.alt_text) if alt_text else cap)
                                if cap is not None else None, "error": errors[i]})
                results[-1].update(trust_fields(cap, conf, resolve_prompt(model, gen), gen.alt_text, alt_text))
            bar.update(len(chunk))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        model.train(was_training)
    return results


def trust_fields(caption, confidence, prompt: str, alt: AltTextConfig, use_fallback: bool) -> dict:
    """The ``confidence`` and ``degenerate`` fields of one caption (and the fallback alt text when set)."""
    if caption is None:
        return {"confidence": None, "degenerate": None}
    reason = degenerate_reason(caption, prompt, confidence, alt.min_confidence)
    out = {"confidence": round(confidence, 4) if confidence is not None else None, "degenerate": reason}
    if reason and use_fallback and alt.fallback is not None:
        out["alt_text"] = alt.fallback
    return out


# ---------------------------------------------------------------- VQA
def _prompts(model, questions: Sequence[str], vqa_cfg) -> list[list[int]]:
    from mmfm.config.task import VQALossConfig
    from mmfm.tasks.vqa import question_prompt

    vqa_cfg = vqa_cfg or VQALossConfig()
    return [question_prompt(model.layout, vqa_cfg.template, q, vqa_cfg.max_question_tokens, answer_room=1)
            for q in questions]


@torch.no_grad()
def answer_questions(model, images: torch.Tensor, questions: Sequence[str], gen: GenerateConfig | None = None,
                     vqa_cfg=None, **overrides) -> list[str]:
    """Generated answers, one per (image, question) pair (images already preprocessed, (B, 3, H, W))."""
    gen = gen or GenerateConfig()
    if len(questions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(questions)} questions")
    if gen.seed is not None and gen.do_sample:
        torch.manual_seed(gen.seed)
    ids = model.generate_ids(images.to(model_device(model)), _prompts(model, questions, vqa_cfg),
                             **generation_kwargs(gen, **overrides))
    return [clean_caption(model.decode(row)) for row in ids]


@torch.no_grad()
def rank_answers(model, images: torch.Tensor, questions: Sequence[str], candidates: Sequence[str] |
                 Sequence[Sequence[str]], vqa_cfg=None) -> list[list[dict]]:
    """Score each candidate answer by its log-likelihood (answer tokens + eos) given image and question.

    ``candidates``: one list shared by all questions, or one list per question. Returns, per question, the
    candidates sorted best first as ``{"answer", "logprob", "mean_logprob"}``."""
    if candidates and isinstance(candidates[0], str):
        candidates = [list(candidates)] * len(questions)
    if len(candidates) != len(questions) or any(not c for c in candidates):
        raise ValueError("rank_answers needs a non-empty candidate list for every question")
    device = model_device(model)
    tokens = model.image_tokens(images.to(device))
    out: list[list[dict]] = []
    for qi, prompt in enumerate(_prompts(model, questions, vqa_cfg)):
        rows = [model.layout.right_pad(*model.sequence(prompt, c)) for c in candidates[qi]]
        ids = torch.stack([r["text_ids"] for r in rows]).to(device)
        mask = torch.stack([r["attention_mask"] for r in rows]).to(device)
        labels = torch.stack([r["labels"] for r in rows]).to(device)
        logits = _text_logits(model(image_tokens=tokens[qi: qi + 1].expand(len(rows), -1, -1), text_ids=ids,
                                    attention_mask=mask))[:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        keep = target != -100
        total = (logp * keep).sum(1)
        mean = total / keep.sum(1).clamp(min=1)
        scored = [{"answer": c, "logprob": float(t), "mean_logprob": float(m)}
                  for c, t, m in zip(candidates[qi], total, mean)]
        out.append(sorted(scored, key=lambda d: -d["logprob"]))
    return out


def answer_rows(model, rows: list[dict], gen: GenerateConfig, vqa_cfg, candidates: Sequence[str] | None = None,
                top: int = 5, progress: bool = False) -> list[dict]:
    """Answer ``rows`` ``{id, image, question}`` in batches: ``{**row, answer, error[, ranking]}`` in order.
    With ``candidates`` the answers are ranked by likelihood (the ``top`` best kept) instead of generated."""
    from tqdm import tqdm

    transform = eval_transform(model)
    out = []
    bs = gen.batch_size
    for start in tqdm(range(0, len(rows), bs), desc="vqa", unit="batch", disable=not progress):
        chunk = rows[start: start + bs]
        tensors, errors = decode_images([r["image"] for r in chunk], transform)
        ok = [i for i, t in enumerate(tensors) if t is not None]
        answers, ranked = {}, {}
        if ok:
            images = torch.stack([tensors[i] for i in ok])
            questions = [chunk[i]["question"] for i in ok]
            if candidates:
                for i, r in zip(ok, rank_answers(model, images, questions, candidates, vqa_cfg)):
                    ranked[i], answers[i] = r[:top], r[0]["answer"]
            else:
                answers.update(zip(ok, answer_questions(model, images, questions, gen, vqa_cfg)))
        for i, row in enumerate(chunk):
            res = {**row, "answer": answers.get(i), "error": errors[i]}
            if candidates:
                res["ranking"] = ranked.get(i)
            out.append(res)
    return out


# ---------------------------------------------------------------- presets
def preset_names() -> list[str]:
    """The decoding presets shipped with mmfm (``configs/generate/*.yaml``, package data)."""
    from mmfm.config.resources import resource_dir
    return sorted(p.name[:-5] for p in resource_dir("configs", "generate").iterdir() if p.name.endswith(".yaml"))


def load_preset(spec: str) -> dict:
    """A shipped preset by name (greedy, beam, sample, alt_text) or a YAML file -> its ``generate`` settings."""
    from mmfm.config import read_yaml
    from mmfm.config.resources import resource_dir

    path = spec if spec.endswith((".yaml", ".yml")) else resource_dir("configs", "generate") / f"{spec}.yaml"
    if not os.path.isfile(path):
        raise ConfigError(f"no decoding preset '{spec}' (known: {', '.join(preset_names()) or 'none'}; or a YAML file)")
    data = read_yaml(path)
    return data.get("generate", data)


SETTING_FIELDS = ("num_beams", "do_sample", "temperature", "top_p", "top_k", "min_new_tokens", "max_new_tokens",
                  "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "prompt", "seed", "batch_size",
                  "use_cache")


def merge_settings(base: GenerateConfig, preset: str | None = None, **overrides) -> GenerateConfig:
    """The stored settings, then a preset (name or YAML), then explicit overrides (``None`` = keep); validated."""
    from mmfm.config import from_dict, to_dict

    data = to_dict(base)
    if preset:
        p = load_preset(preset)
        data = {**data, **{k: v for k, v in p.items() if k != "alt_text"},
                "alt_text": {**data["alt_text"], **(p.get("alt_text") or {})}}
    unknown = sorted(set(overrides) - set(SETTING_FIELDS))
    if unknown:
        raise ConfigError(f"unknown decoding settings: {', '.join(unknown)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data["min_new_tokens"] > data["max_new_tokens"]:
        data["min_new_tokens"] = data["max_new_tokens"]
    return from_dict(GenerateConfig, data, prefix="generate")
