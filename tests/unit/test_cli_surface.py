"""The command-line surface, frozen (as torchtitan freezes its flags): every command's and sub-command's
positionals and options with their kind, choices and whether they are required. An accidental rename or a
removed flag fails here. After an intended change, regenerate the snapshot and review its diff:

    MMFM_UPDATE_CLI_SURFACE=1 python -m pytest tests/unit/test_cli_surface.py
"""
import argparse
import importlib
import json
import os
from pathlib import Path

from mmfm.cli import COMMANDS

SNAPSHOT = Path(__file__).resolve().parents[1] / "fixtures" / "cli" / "surface.json"


def _describe(parser: argparse.ArgumentParser) -> dict:
    out: dict = {"positionals": [], "options": {}, "subcommands": {}}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if isinstance(a, argparse._SubParsersAction):
            out["subcommands"] = {name: _describe(p) for name, p in sorted(a.choices.items())}
            continue
        kind = type(a).__name__.lstrip("_").replace("Action", "") or "Store"
        info = {"kind": kind, "required": bool(a.required), "nargs": a.nargs,
                "choices": sorted(map(str, a.choices)) if a.choices else None,
                "hidden": a.help == argparse.SUPPRESS}
        if a.option_strings:
            out["options"][" ".join(sorted(a.option_strings))] = info
        else:
            out["positionals"].append({"name": a.dest, **info})
    return out


def surface() -> dict:
    return {name: _describe(importlib.import_module(f"mmfm.commands.{name}").build_parser()) for name in COMMANDS}


def test_every_command_has_a_parser_and_the_surface_is_unchanged():
    now = surface()
    if os.environ.get("MMFM_UPDATE_CLI_SURFACE"):
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    frozen = json.loads(SNAPSHOT.read_text())
    changed = sorted(set(now) ^ set(frozen)) + sorted(k for k in now if k in frozen and now[k] != frozen[k])
    assert not changed, (f"the command line changed: {changed}. If intended, regenerate the snapshot "
                         f"(MMFM_UPDATE_CLI_SURFACE=1) and review its diff.")


def test_inference_commands_take_their_inputs_positionally():
    s = surface()
    for cmd in ("zeroshot", "retrieval", "caption", "vqa", "export"):
        assert s[cmd]["positionals"], f"mmfm {cmd} takes no positional input"
    for sub in ("caption", "vqa", "bias", "compare"):
        assert s["eval"]["subcommands"][sub]["positionals"][0]["name"] == "data"
