"""VQA as conditional generation: the captioner answers after the prompt ``question: ... answer:``.

Training uses VQAv2-style answer lists: every distinct (normalised) answer of a question becomes one target
sequence, weighted by its agreement (``task.vqa.weighting``: ``vqa`` = the official VQAv2 accuracy that answer
would score, ``frequency`` = its share of the human answers). The loss of a question is the weighted mean of its
answers' per-token NLL; the batch loss is the mean over questions. Only answer tokens (and eos) count.

Samples: ``json`` with ``question`` and ``answers`` (a list of up to 10 strings, or ``answer``), as
``mmfm shards build --source vqa`` writes them; the question falls back to ``txt``.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.transforms import model_transform

from .caption import check_captioner, image_masked, shifted_token_loss, token_accuracy

__all__ = ["VQATask", "VQAProcessor", "question_prompt", "target_answers"]

log = logging.getLogger("mmfm.vqa")
_WARNED = Counter()


def _warn(kind: str, message: str) -> None:
    _WARNED[kind] += 1
    if _WARNED[kind] <= 5:
        log.warning(message + (" (further warnings of this kind are counted, not shown)" if _WARNED[kind] == 5 else ""))


def question_prompt(layout, template: str, question: str | None, max_question_tokens: int,
                    answer_room: int = 1, key: str = "") -> list[int]:
    """Prompt ids for one question. An empty question or one longer than ``max_question_tokens`` (or than
    the decoder's ``max_length`` leaves room for) is truncated with a warning, never an error."""
    where = f" (sample {key})" if key else ""
    question = " ".join(str(question or "").split())
    if not question:
        _warn("empty", f"empty question{where}: answering from the image alone")
    q_ids = layout.encode_plain(question) if question else []
    head, _, tail = template.partition("{question}")
    head_ids = layout.encode_plain(head.strip()) if head.strip() else []
    tail_ids = layout.encode_plain(tail.strip()) if tail.strip() else []
    budget = min(max_question_tokens, layout.max_length - 1 - len(head_ids) - len(tail_ids) - answer_room - 1)
    if budget < 0:
        raise ConfigError(f"task.vqa.template leaves no room for a question and an answer in "
                          f"model.decoder.max_length={layout.max_length}")
    if len(q_ids) > budget:
        _warn("long", f"question of {len(q_ids)} tokens truncated to {budget}{where}: {question[:80]!r}")
        q_ids = q_ids[:budget]
    return head_ids + q_ids + tail_ids


def target_answers(answers, weighting: str = "vqa", max_answers: int = 10) -> list[tuple[str, float]]:
    """Distinct normalised answers with their weights, highest first (ties keep first occurrence)."""
    from mmfm.data.vqa_answers import answer_weights, normalize_answer

    answers = [a for a in answers if isinstance(a, str) and a.strip()]
    if not answers:
        return []
    if weighting == "vqa":
        weights = answer_weights(answers)
    else:
        counts = Counter(normalize_answer(a) for a in answers)
        weights = {a: c / len(answers) for a, c in counts.items()}
    ranked = sorted(((a, w) for a, w in weights.items() if a and w > 0), key=lambda aw: -aw[1])
    return ranked[:max_answers]


class VQAProcessor:
    """Decoded sample -> ``{"image", "text_ids" (K, L), "attention_mask" (K, L), "labels" (K, L),
    "answer_weights" (K,), "key"}``; K = ``task.vqa.max_answers`` slots, unused ones have weight 0."""

    required_keys = None

    def __init__(self, transform, layout, vqa_cfg, image_keys: str = "jpg;jpeg;png;webp"):
        self.transform, self.layout, self.cfg = transform, layout, vqa_cfg
        self.required_keys = [image_keys, "json"]

    def __call__(self, sample: dict) -> dict:
        key = sample.get("__key__", "?")
        image = sample.get("image")
        if image is None:
            raise KeyError(f"sample '{key}' has no image")
        meta = sample.get("json") or {}
        question = meta.get("question") or sample.get("txt")
        if isinstance(question, bytes):
            question = question.decode("utf-8")
        raw = meta.get("answers") or ([meta["answer"]] if meta.get("answer") else [])
        answers = target_answers(raw, self.cfg.weighting, self.cfg.max_answers)
        if not answers:
            raise KeyError(f"sample '{key}' has no answers in its json ('answers' or 'answer')")
        prompt = question_prompt(self.layout, self.cfg.template, question, self.cfg.max_question_tokens, key=key)
        k, length = self.cfg.max_answers, self.layout.max_length
        ids = torch.full((k, length), self.layout.pad, dtype=torch.long)
        mask = torch.zeros((k, length), dtype=torch.long)
        labels = torch.full((k, length), -100, dtype=torch.long)
        weights = torch.zeros(k)
        for i, (answer, w) in enumerate(answers):
            seq, n_prefix = self.layout.sequence(prompt, answer)
            row = self.layout.right_pad(seq, n_prefix)
            ids[i], mask[i], labels[i], weights[i] = row["text_ids"], row["attention_mask"], row["labels"], w
        return {"image": self.transform(image), "text_ids": ids, "attention_mask": mask, "labels": labels,
                "answer_weights": weights, "key": key}


class VQATask(nn.Module):
    """``task(batch) -> {"loss", "answer_nll", "token_acc"}``; batch tensors as VQAProcessor makes them."""

    accumulation_mode = "plain"

    def __init__(self, cfg, model: nn.Module | None = None):
        super().__init__()
        from mmfm.models.factory import build_model

        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg.model)
        check_captioner(self.model, "vqa")
        self.vqa_cfg = cfg.task.vqa
        if self.vqa_cfg.max_answers < 1:
            raise ConfigError(f"task.vqa.max_answers: must be >= 1, got {self.vqa_cfg.max_answers}")
        if "{question}" not in self.vqa_cfg.template:
            raise ConfigError(f"task.vqa.template: must contain '{{question}}', got {self.vqa_cfg.template!r}")
        self.label_smoothing = cfg.task.caption.label_smoothing

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def processor(self, train: bool) -> VQAProcessor:
        data = getattr(self.cfg, "data", None)
        augment = train and (data.train_augment if data is not None else True)
        keys = data.image_keys if data is not None else "jpg;jpeg;png;webp"
        return VQAProcessor(model_transform(self.model, augment), self.model.layout, self.vqa_cfg, keys)

    def forward(self, batch: dict) -> dict:
        ids, mask, labels = batch["text_ids"], batch["attention_mask"], batch["labels"]
        weights = batch["answer_weights"].float()
        if ids.ndim == 2:                                   # one answer per question
            ids, mask, labels, weights = ids[:, None], mask[:, None], labels[:, None], weights.reshape(-1, 1)
        b, k, length = ids.shape
        tokens = self.model.image_tokens(batch["image"])
        rows = (weights > 0).reshape(-1).nonzero().squeeze(1)   # only real answer slots go through the decoder
        owner = rows // k
        out = self.model(image_tokens=tokens[owner], text_ids=ids.reshape(-1, length)[rows],
                         attention_mask=mask.reshape(-1, length)[rows])
        row_labels = image_masked(labels.reshape(-1, length)[rows], out)
        nll = shifted_token_loss(out["logits"], row_labels, self.label_smoothing, reduction="none")
        w = weights.reshape(-1)[rows]
        per_q = torch.zeros(b, device=nll.device).index_add(0, owner, w * nll)
        norm = torch.zeros(b, device=nll.device).index_add(0, owner, w).clamp(min=1e-8)
        loss = (per_q / norm).mean()
        return {"loss": loss, "answer_nll": loss.detach(), "token_acc": token_accuracy(out["logits"], row_labels)}
