"""Decoding for open_clip CoCa (:class:`mmfm.models.openclip_coca.OpenCLIPCoCa`) with open_clip's semantics, on
transformers 5.

open_clip 3.3's ``CoCa.generate(generation_type="beam_search")`` drives transformers 4's ``BeamSearchScorer``,
which transformers 5 removed. transformers 5's own ``generate(num_beams=N)`` cannot stand in for it token for
token: it ranks beams by summed *log-softmax* scores, while open_clip sums the decoder's *raw logits*; it divides
a finished hypothesis' score by the number of new tokens, while open_clip divides by the whole sequence length
(start token and prompt included, ``length_penalty`` 1.0, ``early_stopping=False``), and its early-stop test uses
the same shorter length. So the search below keeps open_clip's rules and uses transformers' own logits processors
(minimum new tokens, repetition penalty, no-repeat n-grams) on the raw logits, as open_clip does:

* each step: processors on every beam's last raw logits, plus the beam's running score; the top ``2 * beams``
  candidates of each image, best first; an eos candidate among the first ``beams`` closes a hypothesis scored
  ``running / total_length ** length_penalty``; the first ``beams`` non-eos candidates run on;
* an image is done once it holds ``beams`` hypotheses and none beats the best candidate of this step divided by
  the current total length; the search stops when every image is done or the sequences reach the maximum length;
* at the end each running beam of an unfinished image becomes a hypothesis; the best one wins (the one added last
  among equal scores), eos appended when it is shorter than the maximum length.

open_clip's ``num_beam_groups`` (default 3) adds no diversity penalty, so its groups are identical searches of
``num_beams // num_beam_groups`` beams each and the result is that search's: ``num_beam_groups=G`` runs it so.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["coca_processors", "coca_beam_search", "coca_greedy"]


def coca_processors(prompt_len: int, eos: int, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                    no_repeat_ngram_size: int = 0):
    """transformers' logits processors for the settings open_clip applies (min length, repetition penalty) and
    mmfm's no-repeat n-grams, on raw logits."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                                                        NoRepeatNGramLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor)
    procs = LogitsProcessorList()
    if min_new_tokens > 0:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, int(min_new_tokens), eos))
    if float(repetition_penalty) != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(int(no_repeat_ngram_size)))
    return procs


def coca_greedy(step: Callable, seq: torch.Tensor, max_new: int, procs, eos: int, pad: int) -> torch.Tensor:
    """Greedy new tokens (B, T) after ``seq``; pad after each row's eos (open_clip's ``top_k`` with k=1)."""
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    new = []
    for _ in range(max_new):
        logits = procs(seq, step(seq).float())
        token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
        new.append(token)
        seq = torch.cat([seq, token[:, None]], 1)
        done |= token == eos
        if done.all():
            break
    return torch.stack(new, 1)


def _add(hyps: list, score: float, tokens: list[int], beams: int) -> None:
    """Keep the ``beams`` best (score, tokens); a new one must beat the worst once full."""
    if len(hyps) < beams or score > min(h[0] for h in hyps):
        hyps.append((score, tokens))
        if len(hyps) > beams:
            hyps.pop(min(range(len(hyps)), key=lambda i: hyps[i][0]))


def _select(top, index, seq, hyps, beams, vocab, eos, lp):
    """One image's candidates -> (scores, tokens, source rows) of the beams that run on; closes eos ones."""
    total = seq.shape[1] + 1
    scores, tokens, rows = [], [], []
    for rank, (s, i) in enumerate(zip(top.tolist(), index.tolist())):
        row, tok = i // vocab, i % vocab
        if tok == eos:
            if rank < beams:
                _add(hyps, s / (total ** lp), seq[row].tolist(), beams)
        else:
            scores.append(s)
            tokens.append(tok)
            rows.append(row)
        if len(rows) == beams:
            break
    return scores, tokens, rows


@torch.no_grad()
def coca_beam_search(step: Callable, seq: torch.Tensor, max_new: int, procs, *, beams: int, eos: int, pad: int,
                     length_penalty: float = 1.0) -> torch.Tensor:
    """Beam search with open_clip's rules (module docstring); ``step(ids) -> last logits`` runs the decoder on
    (B * beams) rows (image rows repeated ``beams`` times each). New tokens (B, T), eos then pad."""
    b, start = seq.shape
    max_len = start + max_new
    ids = seq.repeat_interleave(beams, 0)
    running = torch.full((b, beams), -1e9, dtype=torch.float32, device=seq.device)
    running[:, 0] = 0
    hyps: list[list] = [[] for _ in range(b)]
    done = [False] * b
    while True:
        logits = procs(ids, step(ids).float())
        vocab = logits.shape[-1]
        cand = (logits + running.view(-1, 1)).view(b, beams * vocab)
        top, index = cand.topk(2 * beams, dim=1)
        nxt = torch.zeros_like(running)
        tok = torch.full((b, beams), pad, dtype=torch.long, device=seq.device)
        src = torch.arange(b * beams, device=seq.device).view(b, beams)
        for i in range(b):
            if done[i]:
                continue
            mine = ids[i * beams:(i + 1) * beams]
            s, t, r = _select(top[i], index[i], mine, hyps[i], beams, vocab, eos, length_penalty)
            nxt[i], tok[i], src[i] = torch.tensor(s), torch.tensor(t), torch.tensor(r) + i * beams
            best = float(top[i].max()) / ((ids.shape[1] + 1) ** length_penalty)
            done[i] = len(hyps[i]) >= beams and min(h[0] for h in hyps[i]) >= best
        running = nxt
        ids = torch.cat([ids[src.view(-1)], tok.view(-1, 1)], 1)
        if all(done) or ids.shape[1] >= max_len:
            break
    return _finalize(ids, running, hyps, done, (beams, start, max_len, eos, pad, length_penalty))


def _finalize(ids, running, hyps, done, settings) -> torch.Tensor:
    """Each unfinished image's running beams join its hypotheses; the best per image, eos-terminated, padded."""
    beams, start, max_len, eos, pad, lp = settings
    out = []
    for i, h in enumerate(hyps):
        if not done[i]:
            for j in range(beams):
                _add(h, float(running[i, j]) / (ids.shape[1] ** lp), ids[i * beams + j].tolist(), beams)
        best = sorted(h, key=lambda x: x[0])[-1][1]
        new = best[start:] + ([eos] if len(best) < max_len else [])
        out.append(new)
    width = max(len(r) for r in out)
    return torch.tensor([r + [pad] * (width - len(r)) for r in out], dtype=torch.long, device=ids.device)
