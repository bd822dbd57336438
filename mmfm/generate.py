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
The settings a model was trained with live in its checkpoint (``config.yaml``'s ``generate:`` section);
:func:`load_captioner` returns them with the model.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import torch

from mmfm.config import ConfigError
from mmfm.config.caption import AltTextConfig, GenerateConfig

__all__ = ["generation_kwargs", "settings_dict", "to_alt_text", "clean_caption", "load_captioner",
           "caption_images", "caption_tensors", "answer_questions", "rank_answers", "decode_images"]

_HF_FIELDS = ("num_beams", "do_sample", "temperature", "top_p", "top_k", "min_new_tokens", "max_new_tokens",
              "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "use_cache")
_PREFIX = re.compile(
    r"^\s*(?:(?:this|it)\s+is\s+|there\s+is\s+)?(?:an?\s+|the\s+)?(?:close[\s-]?up\s+)?"
    r"(?:image|picture|photo|photograph|pic|snapshot|screenshot)\s+(?:that\s+shows|showing|of|with)\s+",
    re.IGNORECASE)
_DANGLING = {"a", "an", "the", "and", "or", "with", "of", "on", "in", "at", "to", "for", "from", "by", "is",
             "are", "while", "near", "under", "over"}


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
    dirs and int8 folders alike). ``model_or_spec``: a path, or a loaded model (its ``checkpoint_path`` is read).
    Without stored settings: ``default``, or the GenerateConfig defaults when none is given."""
    from mmfm.compress.quantize import read_config

    spec = getattr(model_or_spec, "checkpoint_path", None) if hasattr(model_or_spec, "parameters") else model_or_spec
    try:
        if spec:
            return read_config(spec).generate
    except (ConfigError, OSError):
        pass
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


# ---------------------------------------------------------------- loading
def load_captioner(path: str, device: str = "cpu"):
    """``(model, GenerateConfig)`` from a captioner checkpoint (the generate settings stored with it)."""
    from mmfm.models.loading import load_pretrained

    if not str(path).startswith("openclip:") and not os.path.exists(os.path.expanduser(str(path))):
        raise ConfigError(f"checkpoint not found: {path}")
    model = load_pretrained(path, device=device)
    if not callable(getattr(model, "generate_ids", None)):
        kind = getattr(getattr(model, "model_cfg", None), "kind", "?")
        raise ConfigError(f"{path} is not a captioner checkpoint (model.kind={kind}); captioning and VQA need "
                          f"model.kind: captioner")
    return model, stored_generate(path)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def decode_images(items: Sequence, transform, max_pixels: int | None = None) -> tuple[list, list]:
    """Paths / bytes / PIL images -> (tensors or None, error strings or None), one per item."""
    from mmfm.eval.folder import DEFAULT_MAX_PIXELS, decode_image

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
                    **overrides) -> list[str]:
    """Raw captions for a batch of preprocessed images (B, 3, H, W)."""
    gen = gen or GenerateConfig()
    prompt = resolve_prompt(model, gen) if prompt is None else prompt
    prefix = model.encode_plain(prompt) if prompt else []
    if gen.seed is not None and gen.do_sample:
        torch.manual_seed(gen.seed)
    ids = model.generate_ids(images.to(_device(model)), [prefix] * images.shape[0],
                             **generation_kwargs(gen, **overrides))
    return [clean_caption(model.decode(row)) for row in ids]


def _eval_transform(model):
    from mmfm.models.clip import eval_transform
    return eval_transform(model.preprocess)


def caption_images(model, items: Sequence, gen: GenerateConfig | None = None, *, names: Sequence[str] | None = None,
                   batch_size: int | None = None, alt_text: bool = True, progress: bool = False,
                   max_pixels: int | None = None) -> list[dict]:
    """``[{"image": name, "caption": raw, "alt_text": ..., "error": None | str}]`` in input order."""
    from tqdm import tqdm

    gen = gen or GenerateConfig()
    names = list(names) if names is not None else [str(x) if isinstance(x, (str, os.PathLike)) else f"image_{n}"
                                                   for n, x in enumerate(items)]
    bs = int(batch_size or gen.batch_size)
    transform = _eval_transform(model)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    bar = tqdm(total=len(items), desc="captioning", unit="img", disable=not progress)
    try:
        for start in range(0, len(items), bs):
            chunk = list(items[start: start + bs])
            tensors, errors = decode_images(chunk, transform, max_pixels)
            ok = [i for i, t in enumerate(tensors) if t is not None]
            caps = caption_tensors(model, torch.stack([tensors[i] for i in ok]), gen) if ok else []
            by_index = dict(zip(ok, caps))
            for i in range(len(chunk)):
                cap = by_index.get(i)
                results.append({"image": names[start + i], "caption": cap,
                                "alt_text": (to_alt_text(cap, gen.alt_text) if alt_text else cap)
                                if cap is not None else None, "error": errors[i]})
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return results


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
    ids = model.generate_ids(images.to(_device(model)), _prompts(model, questions, vqa_cfg),
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
    device = _device(model)
    tokens = model.image_tokens(images.to(device))
    out: list[list[dict]] = []
    for qi, prompt in enumerate(_prompts(model, questions, vqa_cfg)):
        rows = [model.layout.right_pad(*model.sequence(prompt, c)) for c in candidates[qi]]
        ids = torch.stack([r["text_ids"] for r in rows]).to(device)
        mask = torch.stack([r["attention_mask"] for r in rows]).to(device)
        labels = torch.stack([r["labels"] for r in rows]).to(device)
        logits = model(image_tokens=tokens[qi: qi + 1].expand(len(rows), -1, -1), text_ids=ids,
                       attention_mask=mask)["logits"][:, :-1].float()
        target = labels[:, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        keep = target != -100
        total = (logp * keep).sum(1)
        mean = total / keep.sum(1).clamp(min=1)
        scored = [{"answer": c, "logprob": float(t), "mean_logprob": float(m)}
                  for c, t, m in zip(candidates[qi], total, mean)]
        out.append(sorted(scored, key=lambda d: -d["logprob"]))
    return out


# ---------------------------------------------------------------- command-line settings
_PRESET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "generate")


def add_generate_args(p) -> None:
    """Decoding flags shared by ``mmfm caption``, ``mmfm vqa`` and ``mmfm eval``; unset flags keep the
    checkpoint's stored settings."""
    g = p.add_argument_group("decoding (default: the settings stored with the checkpoint)")
    g.add_argument("--preset", metavar="NAME|YAML", help="a decoding preset: greedy, beam, sample, alt_text, "
                   "or a YAML file with generate settings (configs/generate/)")
    g.add_argument("--num-beams", type=int)
    g.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy/beam")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--min-new-tokens", type=int)
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--no-cache", action="store_true", help="decode without the KV cache (slower; for checks)")
    g.add_argument("--prompt", help="decoder prompt (default: the one the model was trained with)")
    g.add_argument("--seed", type=int, help="seed for --do-sample")
    g.add_argument("--batch-size", type=int)


def load_preset(spec: str) -> dict:
    from mmfm.config import read_yaml

    path = spec if spec.endswith((".yaml", ".yml")) else os.path.join(_PRESET_DIR, f"{spec}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(_PRESET_DIR) if f.endswith(".yaml")) if os.path.isdir(
            _PRESET_DIR) else []
        raise ConfigError(f"--preset: no decoding preset '{spec}' (known: {', '.join(known) or 'none'})")
    data = read_yaml(path)
    return data.get("generate", data)


def generate_config_from_args(base: GenerateConfig, args) -> GenerateConfig:
    """The checkpoint's settings, then a preset, then explicit flags; validated."""
    from mmfm.config import from_dict, to_dict

    data = to_dict(base)
    if getattr(args, "preset", None):
        preset = load_preset(args.preset)
        data = {**data, **{k: v for k, v in preset.items() if k != "alt_text"},
                "alt_text": {**data["alt_text"], **(preset.get("alt_text") or {})}}
    for field in ("num_beams", "do_sample", "temperature", "top_p", "top_k", "min_new_tokens", "max_new_tokens",
                  "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "prompt", "seed", "batch_size"):
        value = getattr(args, field, None)
        if value is not None:
            data[field] = value
    if getattr(args, "no_cache", False):
        data["use_cache"] = False
    if data["min_new_tokens"] > data["max_new_tokens"]:
        data["min_new_tokens"] = min(data["min_new_tokens"], data["max_new_tokens"])
    return from_dict(GenerateConfig, data, prefix="generate")
