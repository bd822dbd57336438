#!/usr/bin/env python
"""Caption tokenization speed: mmfm's ``openclip`` tokenizer (Rust ``tokenizers`` BPE, mmfm.data.openclip_bpe) vs
open_clip's ``SimpleTokenizer`` (what open_clip_train tokenizes with), same captions, same context length,
alternating repeats in one process; both sides first checked to give identical ids.

    python bench/bpe.py [--captions 20000] [--repeats 3] [--batch 1]

Captions are synthetic alt-text: Zipf-distributed words from a 30k-word vocabulary (a long tail of unseen
words, so BPE caches do not hide the merge cost), digits, punctuation, capitals, and ~10% with accents, emoji,
HTML entities or mojibake. ``--batch 1`` tokenizes one caption per call, as the training loader does per sample;
a larger batch shows the batched path. Prints ms/caption (wall) and CPU ms/caption (os.times) for both sides
and the ratios; the figures are noisy on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import random
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXTRAS = ["café", "naïve", "Zürich", "🐶", "❤️", "&amp;", "&quot;hi&quot;", "cafÃ©", "東京", "—", "“quoted”", "½"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 10))) for _ in range(30000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    out = []
    for _ in range(n):
        words = rng.choices(vocab, weights, k=rng.randint(4, 25))
        if rng.random() < 0.3:
            words[0] = words[0].title()
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 5000)))
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), rng.choice(EXTRAS))
        text = " ".join(words) + rng.choice(["", ".", "!", " ...", ","])
        out.append(text)
    return out


def run(fn, texts: list[str], batch: int) -> tuple[float, float]:
    """(wall s, cpu s) to tokenize ``texts`` ``batch`` at a time."""
    c0, t0 = os.times(), time.perf_counter()
    for i in range(0, len(texts), batch):
        fn(texts[i:i + batch] if batch > 1 else texts[i])
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captions", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    from mmfm.data.tokenizers import build_tokenizer

    torch.set_num_threads(1)
    texts = captions(args.captions)
    ours, ref = build_tokenizer("openclip", context_length=77), SimpleTokenizer(context_length=77)
    assert ours._bpe.uses_rust, "the tokenizers package is missing: mmfm falls back to the Python BPE"
    assert torch.equal(ours(texts[:2000])["text_ids"], ref(texts[:2000])), "ids differ"
    sides = {"mmfm (Rust BPE)": lambda t: ours(t), "open_clip SimpleTokenizer": lambda t: ref(t)}
    totals = {name: [0.0, 0.0] for name in sides}
    for r in range(args.repeats):                        # alternate, each on fresh (unseen) captions
        chunk = captions(args.captions, seed=r + 1)
        for name, fn in (sides.items() if r % 2 == 0 else reversed(sides.items())):
            wall, cpu = run(fn, chunk, args.batch)
            totals[name][0] += wall
            totals[name][1] += cpu
            print(f"repeat {r}: {name:28s} {wall / len(chunk) * 1e3:.4f} ms/caption  cpu {cpu / len(chunk) * 1e3:.4f}")
    n = args.repeats * args.captions
    (a, (aw, ac)), (b, (bw, bc)) = totals.items()
    print(f"\nbatch {args.batch}, {n} captions per side, load average {os.getloadavg()[0]:.1f} (noisy on a shared machine)")
    print(f"{a}: {aw / n * 1e3:.4f} ms/caption, cpu {ac / n * 1e3:.4f} ms/caption")
    print(f"{b}: {bw / n * 1e3:.4f} ms/caption, cpu {bc / n * 1e3:.4f} ms/caption")
    print(f"speedup (open_clip / mmfm): wall {bw / aw:.2f}x, cpu {bc / max(ac, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
