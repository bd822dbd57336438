"""Download safety and time bounds, against real servers on 127.0.0.1: only http(s) on every redirect hop,
no private/loopback/link-local addresses unless allowed, no local files from a table of URLs unless allowed,
and ``download.timeout`` bounds the whole download even when the server trickles bytes."""
import json
import time

import pytest

from mmfm.data.shards.build import build
from mmfm.data.shards.download import fetch
from mmfm.data.shards.imageops import Skip
from mmfm.data.shards.inspect import iter_samples
from mmfm.data.shards.options import DownloadOptions
from mmfm.data.shards.recipes import resolve_options
from tests.fixtures.shards import factory as F

pytestmark = pytest.mark.timeout(60)
GOOD = {"good.jpg": F.photo(40, 30, seed=1)}


def _build(tmp_path, rows, *sets, out="out"):
    table = tmp_path / "rows.jsonl"
    table.write_text("".join(json.dumps({"image": im, "caption": f"row {i}"}) + "\n" for i, im in enumerate(rows)))
    opts = resolve_options(None, ["workers=0", "image.size=16", "download.retries=0", *sets],
                           {"source": {"path": str(table)}})
    t0 = time.monotonic()
    manifest = build(opts, tmp_path / out, progress=False)[""]
    return manifest, time.monotonic() - t0


def test_redirect_to_file_ftp_or_data_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(F.photo(24, 24, seed=77, fmt="PNG"))
    redirects = {"/to-file": secret.as_uri(), "/to-ftp": "ftp://127.0.0.1/x.jpg",
                 "/to-data": "data:image/png;base64,iVBORw0KGgo="}
    with F.FaultServer(GOOD, redirects=redirects) as server:
        rows = [f"{server.url}/img/good.jpg"] + [f"{server.url}{p}" for p in redirects]
        m, _ = _build(tmp_path, rows, "download.allow_private_urls=true")
    assert m["total_samples"] == 1 and m["failures"] == {"redirect_scheme": 3}
    failed = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["reason"] for f in failed] == ["redirect_scheme"] * 3 and "file scheme" in failed[0]["detail"]
    assert json.loads(next(iter_samples(tmp_path / "out" / "shard-000000.tar"))["json"])["orig_size"] == [40, 30]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3", "[::1]",
                                  "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_private_loopback_and_link_local_addresses_are_refused(host):
    with F.FaultServer(GOOD) as server:
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(Skip) as e:
            fetch(f"http://{host}:{port}/img/good.jpg", DownloadOptions(retries=0, timeout=2))
        assert e.value.reason == "private_address", e.value
        assert "allow_private_urls" in e.value.detail
        assert sum(server.hits.values()) == 0                       # refused before connecting
        ok = DownloadOptions(retries=0, timeout=2, allow_private_urls=True)
        assert fetch(f"{server.url}/img/good.jpg", ok) == GOOD["good.jpg"]  # the explicit opt-in


def test_private_address_is_a_counted_failure_reason(tmp_path):
    with F.FaultServer(GOOD) as server:
        (tmp_path / "local.jpg").write_bytes(F.photo(seed=3))
        m, _ = _build(tmp_path, [f"{server.url}/img/good.jpg", "http://169.254.169.254/latest/meta-data/",
                                 "local.jpg"], "source.allow_local_files=true")
    assert m["total_samples"] == 1 and m["failures"] == {"private_address": 2}


def test_table_of_urls_reads_local_files_only_when_allowed(tmp_path):
    (tmp_path / "near.jpg").write_bytes(F.photo(seed=4))
    far = tmp_path / "elsewhere" / "far.jpg"
    far.parent.mkdir()
    far.write_bytes(F.photo(seed=5))
    with F.FaultServer(GOOD) as server:
        rows = [f"{server.url}/img/good.jpg", "near.jpg", str(far), far.as_uri()]
        m, _ = _build(tmp_path, rows, "download.allow_private_urls=true", "dedup=false")
        assert m["total_samples"] == 1 and m["failures"] == {"local_file": 3}
        detail = json.loads((tmp_path / "out" / "failures.jsonl").read_text().splitlines()[0])["detail"]
        assert "--allow-local-files" in detail
        m, _ = _build(tmp_path, rows, "download.allow_private_urls=true", "dedup=false",
                      "source.allow_local_files=true", out="out2")
    assert m["total_samples"] == 4 and m["failures"] == {}


def test_table_of_local_paths_needs_no_opt_in(tmp_path):
    (tmp_path / "a.jpg").write_bytes(F.photo(seed=6))
    (tmp_path / "b.jpg").write_bytes(F.photo(seed=7))
    m, _ = _build(tmp_path, ["a.jpg", (tmp_path / "b.jpg").as_uri()])
    assert m["total_samples"] == 2 and m["failures"] == {}


def test_trickling_server_cannot_stretch_the_timeout(tmp_path):
    """40 body bytes at 4 bytes/s would take 10 s; the 1 s timeout bounds the whole download."""
    with F.FaultServer(GOOD) as server:
        m, seconds = _build(tmp_path, [f"{server.url}/img/good.jpg", f"{server.url}/trickle"],
                            "download.allow_private_urls=true", "download.timeout=1")
    assert m["failures"] == {"timeout": 1} and m["total_samples"] == 1
    assert seconds < 1 + 2.5, f"build took {seconds:.1f}s with download.timeout=1"


@pytest.mark.parametrize("scheme,data", [("http", b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 400),
                                         ("https", None)])
def test_tarpit_headers_or_tls_handshake_time_out(scheme, data):
    with F.Tarpit(*([data] if data else [])) as tarpit:
        t0 = time.monotonic()
        with pytest.raises(Skip) as e:
            fetch(f"{scheme}://127.0.0.1:{tarpit.port}/x.jpg",
                  DownloadOptions(retries=0, timeout=1, allow_private_urls=True))
        seconds = time.monotonic() - t0
    assert e.value.reason == "timeout" and tarpit.connections == 1
    assert seconds < 1 + 1.0, f"{scheme} tarpit held the download {seconds:.1f}s with timeout=1"
