"""``mmfm shards audit``: an attribute's distribution (missing values as their own group, small groups flagged),
its co-occurrence with classes and caption words and the most skewed associations, on shards built here, read
locally, through memory:// and through the CLI (table, JSON, HTML with an embedded chart)."""
import io
import json
import math
import uuid

import pytest
from PIL import Image

from mmfm.data.shards import write_shards
from mmfm.data.shards.audit import MISSING, audit_shards, format_audit


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


# 12 samples: tone a x 6 (5 "doctor", 1 "nurse"), tone b x 4 (1 doctor, 3 nurse), no tone x 2 (nurse)
ROWS = ([("a", 0, "a doctor at work")] * 5 + [("a", 1, "a nurse smiling")] + [("b", 0, "a doctor at work")]
        + [("b", 1, "a nurse smiling")] * 3 + [(None, 1, "a nurse smiling")] * 2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit") / "shards"
    png = _png()
    write_shards(({"__key__": f"k{i:02d}", "png": png, "cls": c, "txt": cap,
                   "json": ({"tone": t} if t else {"other": 1})} for i, (t, c, cap) in enumerate(ROWS)),
                 root, shard_size=5, classes=["doctor", "nurse"])
    return root


def test_distribution_and_skew_by_hand(shards):
    r = audit_shards(str(shards), "tone", min_count=3, min_group=3)
    assert r["n_samples"] == 12
    assert {g: v["n"] for g, v in r["groups"].items()} == {"a": 6, "b": 4, MISSING: 2}
    assert r["groups"]["a"]["share"] == pytest.approx(0.5)
    assert r["groups"][MISSING]["small"] and not r["groups"]["b"]["small"]          # 2 < min_group 3
    assert r["classes"] == {"doctor": {"a": 5, "b": 1}, "nurse": {"a": 1, "b": 3, MISSING: 2}}
    top = r["skewed"]["class"]
    # lift(doctor, a) = P(a | doctor) / P(a) = (5/6) / (6/12) = 5/3; lift(doctor, missing) = 0 (smoothed rank:
    # ln((0 + .5) / 7 / (2/12)) = ln(3/7)); lift(nurse, missing) = (2/6) / (2/12) = 2
    by = {(x["item"], x["group"]): x for x in top}
    assert by[("doctor", "a")]["lift"] == pytest.approx(5 / 3)
    assert by[("nurse", MISSING)]["lift"] == pytest.approx(2.0)
    assert by[("doctor", "b")]["lift"] == pytest.approx((1 / 6) / (4 / 12))
    assert by[("doctor", MISSING)]["lift"] == 0 and by[("doctor", MISSING)]["log_lift"] == pytest.approx(
        math.log(0.5 / 7 / (2 / 12)))
    assert abs(top[0]["log_lift"]) >= abs(top[-1]["log_lift"])                        # most skewed first
    words = {(x["item"], x["group"]) for x in r["skewed"]["word"]}
    assert ("doctor", "a") in words and "a" not in {x["item"] for x in r["skewed"]["word"]}   # stop words out
    assert "small" in format_audit(r)


def test_caption_word_rule_and_a_memory_url(shards):
    import fsspec
    folder = f"/mmfm-audit-{uuid.uuid4().hex[:8]}/shards"
    fsspec.filesystem("memory").put(str(shards), folder, recursive=True)
    r = audit_shards(f"memory://{folder}", "job", words={"med": ["doctor"], "care": ["nurse", "smiling"]},
                     min_count=1)
    assert {g: v["n"] for g, v in r["groups"].items()} == {"care": 6, "med": 6}
    assert r["classes"]["doctor"] == {"med": 6}                           # class names from the remote manifest
    mixed = audit_shards(str(shards), "job", words={"x": ["doctor"], "y": ["work"]})
    assert mixed["groups"]["mixed"]["n"] == 6 and mixed["groups"][MISSING]["n"] == 6


def test_cli_writes_table_json_and_html(shards, tmp_path, capsys):
    from mmfm.commands.shards import main
    assert main(["audit", str(shards), "--attribute", "tone", "--min-count", "3", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "(missing)" in out and "lift" in out
    body = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert body["groups"]["a"]["n"] == 6
    page = (tmp_path / "o" / "audit.html").read_text()
    assert "data:image/png;base64," in page and "doctor" in page
