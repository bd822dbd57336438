"""Prompt templates for zero-shot classification.

Built-in sets (format strings with ``{}`` for the class name):

* ``openai`` (alias ``imagenet``): the standard 80 OpenAI ImageNet prompts, taken from
  ``open_clip.zero_shot_metadata`` so they are exactly the ones open_clip / CLIP_benchmark use.
* ``openai-simple``: open_clip's 7-prompt subset.
* ``simple``: the single prompt ``"a photo of a {}."``.

A user file holds one template per line (``#`` starts a comment) or a JSON list of strings.
``{c}`` (CLIP_benchmark style) is accepted as well as ``{}``.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path

from mmfm.config import ConfigError

SIMPLE = ["a photo of a {}."]
_PLACEHOLDERS = ("{}", "{c}")


def _openclip_set(attr: str) -> list[str]:
    from open_clip import zero_shot_metadata
    # open_clip stores them as one-argument lambdas; calling with "{}" turns each into a format string.
    return [fn("{}") if callable(fn) else str(fn) for fn in getattr(zero_shot_metadata, attr)]


_BUILTIN = {
    "simple": lambda: list(SIMPLE),
    "openai": lambda: _openclip_set("OPENAI_IMAGENET_TEMPLATES"),
    "imagenet": lambda: _openclip_set("OPENAI_IMAGENET_TEMPLATES"),
    "openai-simple": lambda: _openclip_set("SIMPLE_IMAGENET_TEMPLATES"),
}


def builtin_names() -> list[str]:
    return sorted(_BUILTIN)


def load_templates(spec: str | list[str]) -> tuple[str, list[str]]:
    """Resolve ``spec`` (a built-in name, a file path, one literal template with ``{}``, or a list of strings)
    to ``(name, templates)``."""
    if isinstance(spec, (list, tuple)):
        templates, name = [str(t) for t in spec], "custom"
    elif spec in _BUILTIN:
        templates, name = _BUILTIN[spec](), spec
    elif _is_file(spec):
        templates, name = _read_file(Path(spec)), str(Path(spec).resolve())
    elif any(p in str(spec) for p in _PLACEHOLDERS):       # one literal template, e.g. "an emoji of {}"
        templates, name = [str(spec)], "custom"
    else:
        close = difflib.get_close_matches(str(spec), builtin_names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"templates: '{spec}' is neither a built-in set ({', '.join(builtin_names())}) "
                          f"nor an existing file.{hint}")
    if not templates:
        raise ConfigError(f"templates: '{name}' holds no templates")
    for i, t in enumerate(templates):
        if not any(p in t for p in _PLACEHOLDERS):
            raise ConfigError(f"templates: '{name}' entry {i + 1} ({t!r}) has no '{{}}' placeholder for the class name")
    return name, templates


def _is_file(spec: str) -> bool:
    """Whether ``spec`` names an existing file; a literal template longer than the OS allows for a file name is
    not one (``Path.is_file`` raises ``OSError: File name too long`` there)."""
    try:
        return Path(spec).is_file()
    except OSError:
        return False


def _read_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"templates: {path} is not valid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise ConfigError(f"templates: {path} must hold a JSON list of strings")
        return data
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def format_prompt(template: str, classname: str) -> str:
    """Fill the class name into a template (``{}`` or ``{c}``); other braces are left alone."""
    return template.replace("{c}", classname).replace("{}", classname)


def build_prompts(classnames: list[str], templates: list[str]) -> list[str]:
    """All prompts, class-major: class 0 x every template, then class 1 ... (open_clip's order)."""
    return [format_prompt(t, c) for c in classnames for t in templates]
