"""img2dataset habits of `mmfm shards build`, against real files and a real HTTP server on 127.0.0.1: the
X-Robots-Tag opt-out, a per-host download limit, tables split over many (gzip) files, --retry-failures."""
import json

import pytest

from mmfm.data.shards.build import build
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F

pytestmark = pytest.mark.timeout(90)
PRIVATE = "download.allow_private_urls=true"   # the server is on 127.0.0.1


def _table(tmp_path, urls, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"image": u, "caption": f"row {i}"}) + "\n" for i, u in enumerate(urls)))
    return path


def _build(input_path, out, *sets):
    opts = resolve_options(None, ["workers=0", "image.size=16", "download.retries=0", PRIVATE, *sets],
                           {"source": {"path": str(input_path)}})
    return build(opts, out, progress=False)[""]


def test_x_robots_tag_opt_out_is_honoured_by_default(tmp_path):
    names = ["plain", "noai", "noimageai", "other_bot", "our_bot", "noindex", "two_headers"]
    images = {n: F.photo(20, 16, seed=i) for i, n in enumerate(names)}
    robots = {"noai": ["noai"], "noimageai": ["nofollow, NoImageAI"], "other_bot": ["otherbot: noai"],
              "our_bot": ["mmfm: noai"], "noindex": ["noindex"], "two_headers": ["nofollow", "noai"]}
    with F.FaultServer(images, robots=robots) as server:
        table = _table(tmp_path, [f"{server.url}/robots/{n}" for n in names])
        m = _build(table, tmp_path / "out")
        assert m["failures"] == {"opted_out": 4} and m["total_samples"] == 3
        failed = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
        assert [(f["source"].rsplit("/", 1)[1], f["detail"]) for f in failed] == [
            ("noai", "X-Robots-Tag: noai"), ("noimageai", "X-Robots-Tag: nofollow, NoImageAI"),
            ("our_bot", "X-Robots-Tag: mmfm: noai"), ("two_headers", "X-Robots-Tag: noai")]
        m = _build(table, tmp_path / "all", "download.disallowed_header_directives=[]")
        assert m["failures"] == {} and m["total_samples"] == len(names)


@pytest.mark.timeout(120)
def test_per_host_limit_holds_over_all_workers(tmp_path):
    images = {f"{i}.jpg": F.photo(20, 16, seed=i) for i in range(64)}
    with F.FaultServer(images, delay=0.1) as server:
        table = _table(tmp_path, [f"{server.url}/img/{i}.jpg" for i in range(64)])
        m = _build(table, tmp_path / "limited", "workers=2", "download.threads=4", "download.per_host=2")
        assert m["total_samples"] == 64 and m["failures"] == {}
        assert max(server.peak.values()) == 2, server.peak
        server.peak.clear()
        m = _build(table, tmp_path / "free", "download.threads=4")
        assert m["total_samples"] == 64 and max(server.peak.values()) > 2, server.peak
