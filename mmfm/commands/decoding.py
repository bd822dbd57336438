"""Decoding flags shared by ``mmfm caption``, ``mmfm vqa`` and ``mmfm eval``: argparse in, ``GenerateConfig`` out
(through :func:`mmfm.generate.merge_settings`). Unset flags keep the checkpoint's stored settings."""
from __future__ import annotations

from mmfm.config.caption import GenerateConfig
from mmfm.generate import merge_settings

_FLAGS = ("num_beams", "do_sample", "temperature", "top_p", "top_k", "min_new_tokens", "max_new_tokens",
          "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "prompt", "seed", "batch_size")


def add_generate_args(p) -> None:
    g = p.add_argument_group("decoding (default: the settings stored with the checkpoint)")
    g.add_argument("--preset", metavar="NAME|YAML", help="a decoding preset: greedy, beam, sample, alt_text, "
                   "or a YAML file with generate settings")
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


def generate_config_from_args(base: GenerateConfig, args) -> GenerateConfig:
    """The checkpoint's settings, then ``--preset``, then explicit flags."""
    overrides = {f: getattr(args, f, None) for f in _FLAGS}
    if getattr(args, "no_cache", False):
        overrides["use_cache"] = False
    return merge_settings(base, getattr(args, "preset", None), **overrides)
