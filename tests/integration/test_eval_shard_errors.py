"""Every command that reads shards goes through the training preflight and its error path: a truncated tar
is a one-line error naming the shard (exit 2, as `mmfm train` gives), not a tarfile traceback from the loader."""
import pytest
import torch

from mmfm.data.shards import ShardError, write_shards
from mmfm.models import build_model, save_pretrained

from train_helpers import png


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("badshards")
    write_shards(({"__key__": f"k{i:03d}", "png": png(i), "txt": f"item {i}",
                   "json": {"captions": [f"item {i}"], "group": "ab"[i % 2], "question": "what?",
                            "answers": ["item"]}} for i in range(8)), d / "shards", shard_size=4)
    victim = d / "shards" / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[:3000])            # cut inside the second sample
    (d / "bare").mkdir()                                       # the same tars without a manifest
    for tar in (d / "shards").glob("*.tar"):
        (d / "bare" / tar.name).write_bytes(tar.read_bytes())
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, d / "clip")
    save_pretrained(build_model("tiny_captioner"), None, d / "cap")
    return d


COMMANDS = {
    "retrieval": ["retrieval", "--model", "{clip}", "{data}", "--workers", "0", "--quiet"],
    "eval caption": ["eval", "caption", "--model", "{cap}", "{data}", "--quiet", "--out", "{out}"],
    "eval vqa": ["eval", "vqa", "--model", "{cap}", "{data}", "--quiet", "--out", "{out}"],
    "eval bias": ["eval", "bias", "--model", "{clip}", "{data}", "--attribute", "group", "--quiet", "--out", "{out}"],
    "eval compare": ["eval", "compare", "--model", "{clip}", "{data}", "--variant", "{clip}", "--quiet"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("layout", ["shards", "shards/shard-{000000..000001}.tar", "bare"])
def test_truncated_shard_is_named_like_train_does(setup, tmp_path, capsys, command, layout):
    from mmfm.cli import main as cli
    data = setup / layout
    fill = {"clip": str(setup / "clip"), "cap": str(setup / "cap"), "data": str(data), "out": str(tmp_path / "o")}
    rc = cli([a.format(**fill) if a.startswith("{") else a for a in COMMANDS[command]])
    err = capsys.readouterr().err
    assert rc == 2, err
    head = f"mmfm {command.split()[0]}: config error: shard {data.parent if '{' in layout else data}/shard-000001.tar"
    assert err.startswith(head) and "truncated" in err and "Traceback" not in err, err


def test_shard_cut_while_reading_is_named(setup):
    """A tar that breaks after the preflight (replaced mid-run, or quick preflight) still names the shard."""
    from mmfm.data.sources import read_samples
    url = str(setup / "shards" / "shard-000001.tar")
    with pytest.raises(ShardError, match=r"shard .*shard-000001.tar is unreadable or truncated"):
        list(read_samples([str(setup / "shards" / "shard-000000.tar"), url]))
