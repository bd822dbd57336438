"""The quick demo's emoji subset keeps whole skin-tone families, so its bias table has emoji in every tone."""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from mmfm.data.shards.emoji import base_name, line_name, parse_emoji_test
from mmfm.data.shards.options import EMOJI_TEST
from mmfm.demo.data import subsample_emoji_test

TEST_TXT = """# group: People & Body
# subgroup: hand-fingers-open
1F44B                                                  ; fully-qualified     # 👋 E0.6 waving hand
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone
1F44B 1F3FF                                            ; fully-qualified     # 👋🏿 E1.0 waving hand: dark skin tone
1F91A                                                  ; fully-qualified     # 🤚 E3.0 raised back of hand
1F91A 1F3FB                                            ; fully-qualified     # 🤚🏻 E3.0 raised back of hand: light skin tone
# group: Flags
1F3C1                                                  ; fully-qualified     # 🏁 E0.6 chequered flag
1F6A9                                                  ; fully-qualified     # 🚩 E0.6 triangular flag
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face
"""


def test_line_name_reads_the_cldr_name():
    lines = TEST_TXT.splitlines()
    assert line_name(lines[0]) is None and line_name(lines[1]) is None
    assert line_name(lines[3]) == "waving hand: light skin tone"
    assert base_name(line_name(lines[3])) == "waving hand"


def test_subsample_keeps_every_nth_emoji_with_all_its_tones(tmp_path):
    src = tmp_path / "emoji-test.txt"
    src.write_text(TEST_TXT, encoding="utf-8")
    out = subsample_emoji_test(src, tmp_path / "sub.txt", 2)
    kept = parse_emoji_test(out)
    # base names in order: waving hand (0), raised back of hand (1), chequered flag (2), triangular flag (3),
    # smiling face (4): every 2nd keeps 0, 2, 4, each with all its lines
    assert [e["name"] for e in kept] == ["waving hand", "waving hand: light skin tone",
                                         "waving hand: dark skin tone", "chequered flag", "smiling face"]
    text = out.read_text(encoding="utf-8")
    assert "# group: People & Body" in text and "# group: Flags" in text       # headers stay
    assert "; unqualified" in text                                            # the variant line of a kept emoji


def test_real_emoji_subset_has_full_tone_families():
    """On the real emoji-test.txt the quick demo's subset (every 25th emoji) has all groups and several
    emoji in all six tones (skipped where Debian's unicode-data is not installed)."""
    if not Path(EMOJI_TEST).is_file():
        pytest.skip("needs Debian's unicode-data")
    with tempfile.TemporaryDirectory() as d:
        kept = parse_emoji_test(subsample_emoji_test(Path(EMOJI_TEST), Path(d) / "sub.txt", 25))
    tones = defaultdict(set)
    for e in kept:
        tones[base_name(e["name"])].add(e["skin_tone"])
    full = [b for b, t in tones.items() if {"none", "light", "medium-light", "medium", "medium-dark", "dark"} <= t]
    assert len({e["group"] for e in kept}) == 9 and len(full) >= 5


def test_every_pipeline_stage_is_a_valid_redo_and_until_choice():
    from mmfm.commands.demo import build_parser
    from mmfm.demo.pipeline import build_stages
    for stage in build_stages():
        args = build_parser().parse_args(["--redo", stage.name, "--until", stage.name])
        assert args.redo == [stage.name] and args.until == stage.name


def test_stage_fingerprint_follows_the_resolved_config(tmp_path):
    """Editing a `_base_` config makes the --quick stages stale; editing only a comment does not."""
    import shutil

    from mmfm.demo.pipeline import DemoContext, _fp
    cfg = tmp_path / "cfg"
    shutil.copytree(DemoContext(out=tmp_path).config_dir, cfg)
    ctx = DemoContext(out=tmp_path / "out", quick=True, config_dir=cfg)
    before = _fp(ctx, "clip")
    base = cfg / "clip.yaml"                         # quick_clip.yaml inherits it
    base.write_text(base.read_text() + "\n# only a comment\n")
    assert _fp(ctx, "clip") == before
    base.write_text(base.read_text() + "\ntrain: {lr: 0.123}\n")
    assert _fp(ctx, "clip") != before
