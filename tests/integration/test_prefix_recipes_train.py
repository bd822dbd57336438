"""The shipped LLaVA-style prefix recipes (configs/experiments/prefix/) train end to end through ``mmfm train``
on a tiny GPT-2 saved by transformers and real shards: stage 1 (projector) leaves the saved LM as it was, stage 2
(LoRA, ``--init-from`` the stage-1 run) moves the projector and the LM's weights once the adapters are merged,
and the tuned run captions through the one loader."""
from pathlib import Path

import pytest
import torch

from mmfm.cli import main as cli
from tests.helpers import word_tokenizer
from tests.integration.train_helpers import make_shards

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["colour", "item"] + [str(i) for i in range(6)] + [f"k{i}" for i in range(3)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(recipe: str, lm: str, tok: str, shards: str, out: Path, *extra: str) -> None:
    sets = [f"model.decoder.hf_path={lm}", f"model.decoder.tokenizer={tok}", f"data.train=[{{path: {shards}}}]",
            "data.batch_size=4", "data.shuffle_buffer=4", "train.max_steps=2", "train.warmup_steps=0",
            f"train.output_dir={out}", "train.progress=false", "train.log_every=1"]
    args = ["train", str(ROOT / "configs/experiments/prefix" / f"{recipe}.yaml"), *extra]
    for s in sets:
        args += ["--set", s]
    assert cli(args) == 0


def test_projector_then_lora_recipes_train_end_to_end(tmp_path):
    import transformers as T

    import mmfm
    tok = word_tokenizer(tmp_path / "tok", WORDS)
    lm = tmp_path / "gpt2"
    torch.manual_seed(0)
    T.GPT2LMHeadModel(T.GPT2Config(vocab_size=4 + len(WORDS), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(lm)
    shards = make_shards(tmp_path / "shards", 8, 4)
    _train("projector", str(lm), tok, shards, tmp_path / "projector")
    stage1 = mmfm.load(str(tmp_path / "projector"), expect="captioner")
    lm_sd = T.GPT2LMHeadModel.from_pretrained(lm).state_dict()
    s1 = stage1.state_dict()
    shared = [k for k in lm_sd if "decoder." + k in s1]
    assert len(shared) >= len(lm_sd) - 1                                   # lm_head may be tied
    assert all(torch.equal(s1["decoder." + k], lm_sd[k]) for k in shared)  # stage 1: the LM stays frozen
    _train("lora", str(lm), tok, shards, tmp_path / "lora", "--init-from", str(tmp_path / "projector"))
    stage2 = mmfm.load(str(tmp_path / "lora"), expect="captioner")
    s2 = stage2.state_dict()
    changed = {k.split(".")[0] for k, v in s2.items() if k in s1 and not torch.equal(v, s1[k])}
    assert changed == {"proj", "decoder"}, changed         # the projector and the (merged) LM
    from mmfm.config.caption import GenerateConfig
    from mmfm.generate import caption_tensors
    caps = caption_tensors(stage2.eval(), torch.randn(2, 3, 32, 32), GenerateConfig(max_new_tokens=4))
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
