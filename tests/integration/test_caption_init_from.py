"""``--init-from`` of mmfm's own captioner takes the checkpoint's tokenizer and model section: the demo's
shipped caption config fine-tunes a captioner whose decoder uses another (smaller) vocabulary, and the CLIP
checkpoint that config names need not exist. A real mismatch names the tokenizers on both sides."""
import pytest
import torch

from mmfm.cli import main as cli
from mmfm.config import ExperimentConfig, from_dict
from mmfm.config.model import ModelConfig, expand_model_dict
from mmfm.models.checkpoint import CheckpointMismatchError, init_weights_from, load, save_pretrained
from mmfm.models.factory import build_model
from tests.helpers import word_tokenizer
from tests.integration.train_helpers import ROOT, make_shards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """A captioner checkpoint whose decoder uses a small fitted word vocabulary (like the demo's)."""
    root = tmp_path_factory.mktemp("demo")
    tok = word_tokenizer(root / "tok", ["colour", "item", *map(str, range(6)), "k0", "k1", "k2"])
    cfg = from_dict(ModelConfig, expand_model_dict({"name": "tiny_captioner", "decoder": {"tokenizer": tok}}),
                    prefix="model")
    torch.manual_seed(0)
    model = build_model(cfg)
    return save_pretrained(model, ExperimentConfig(model=cfg, task={"name": "caption"}), root / "caption"), model


def test_shipped_demo_config_fine_tunes_the_demo_captioner(demo_like, tmp_path, monkeypatch):
    ckpt, start = demo_like
    monkeypatch.chdir(tmp_path)                          # no runs/demo/clip here
    shards = make_shards(tmp_path / "shards", 8, 4)
    rc = cli(["train", str(ROOT / "configs/experiments/demo/caption.yaml"), "--init-from", str(ckpt),
              "--set", f"data.train=[{{path: {shards}}}]", "--set", "data.batch_size=4", "--set", "data.workers=0",
              "--set", "data.shuffle_buffer=4", "--set", "train.max_steps=1", "--set", "train.warmup_steps=0",
              "--set", f"train.output_dir={tmp_path / 'run'}", "--set", "train.progress=false"])
    assert rc == 0
    tuned = load(str(tmp_path / "run"))
    assert tuned.tokenizer.name == start.tokenizer.name and tuned.vocab_size == start.vocab_size
    assert tuned.model_cfg.clip_checkpoint is None and tuned.model_cfg.vision.lock     # the YAML's training choice
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert changed and all(k.startswith(("decoder.", "proj.")) for k in changed)     # locked vision stays


def test_a_real_mismatch_names_both_tokenizers(demo_like):
    ckpt, start = demo_like
    other = build_model({"name": "tiny_captioner"})                     # open_clip BPE, 49408 ids
    with pytest.raises(CheckpointMismatchError) as e:
        init_weights_from(other, ckpt)
    msg = str(e.value)
    assert start.tokenizer.name in msg and other.tokenizer.name in msg and "decoder.transformer.wte.weight" in msg


def test_a_fine_tune_from_the_captioner_reads_its_persisted_tower_memo(demo_like, tmp_path, monkeypatch):
    """Issue 24 (the demo's VQA on its captioner): ``model.vision.memo_dir`` survives ``--init-from`` of a
    captioner (a training choice), and the locked tower loaded from the checkpoint has the fingerprint of the run
    that saved the memo, so a second run on the same images runs the tower on none of them."""
    import re

    ckpt, _ = demo_like
    monkeypatch.chdir(tmp_path)
    shards = make_shards(tmp_path / "shards", 8, 4)

    import io
    import logging

    def run(name):
        # the trainer's records, read from its logger ("mmfm" does not propagate, and its stream handler holds
        # whichever stderr the first test that logged had, so captured output depends on the test order)
        buf = io.StringIO()
        handler, logger = logging.StreamHandler(buf), logging.getLogger("mmfm.train")
        logger.addHandler(handler)
        try:
            assert cli(["train", str(ROOT / "configs/experiments/demo/caption.yaml"), "--init-from", str(ckpt),
                        "--set", f"data.train=[{{path: {shards}}}]", "--set", "data.batch_size=4",
                        "--set", "data.workers=0", "--set", "data.shuffle_buffer=4", "--set", "train.max_steps=2",
                        "--set", "train.warmup_steps=0", "--set", f"train.output_dir={tmp_path / name}",
                        "--set", "train.progress=false", "--set", f"model.vision.memo_dir={tmp_path / 'memo'}"]) == 0
        finally:
            logger.removeHandler(handler)
        logged = buf.getvalue()
        found = re.findall(r"locked-feature memo vision-tokens: (\d+) rows read from \S+, (\d+) hits, (\d+) misses",
                           logged)
        assert len(found) == 1, logged[-2000:]
        return tuple(map(int, found[0]))

    first, second = run("a"), run("b")
    print("vision-tokens memo (rows read, hits, misses): first", first, "second", second)
    assert first == (0, 0, 8) and second == (8, 8, 0)
    assert [p.name.split("-")[:2] for p in (tmp_path / "memo").iterdir()] == [["vision", "tokens"]]


def test_a_captioner_without_a_clip_checkpoint_keeps_its_configs_preprocess(tmp_path):
    """The demo's VQA (``--init-from`` its captioner, so no ``clip_checkpoint``) trained with timm's random crop and
    evaluated with its 0.875 centre crop, though ``model.vision.preprocess`` says full images: the keys were only
    applied on top of a CLIP checkpoint's. Random crops also made every locked-tower memo lookup miss (the demo's
    VQA run: 170 hits, 15,190 misses)."""
    from mmfm.data.transforms import model_transform

    tok = word_tokenizer(tmp_path / "tok", ["colour", "item", "k0"])
    pre = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "crop_pct": 1.0}
    cfg = from_dict(ModelConfig, expand_model_dict({"name": "tiny_captioner", "decoder": {"tokenizer": tok},
                                                    "vision": {"preprocess": pre}}), prefix="model")
    assert cfg.clip_checkpoint is None
    model = build_model(cfg)
    assert {k: model.preprocess.get(k) for k in pre} == pre, model.preprocess
    from PIL import Image
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    image.paste((10, 10, 240), (0, 0, 20, 20))
    train_tf = model_transform(model, True)
    assert all(torch.equal(train_tf(image), train_tf(image)) for _ in range(5))     # no random crop
