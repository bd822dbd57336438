"""``mmfm export`` end to end with the default (dynamo) ONNX exporter, and the safetensors round trip."""
import json

import numpy as np
import pytest
import torch

import mmfm
from mmfm.commands.export import main as export_main
from mmfm.models import build_model, save_pretrained

pytest.importorskip("onnxscript")


@pytest.mark.slow
def test_cli_onnx_with_dynamo_exporter_and_safetensors(tmp_path, capsys):
    torch.manual_seed(0)
    save_pretrained(build_model("tiny"), None, tmp_path / "ckpt")
    assert export_main(["--model", str(tmp_path / "ckpt"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert max(summary["parity"].values()) < 1e-5
    cfg = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert cfg["exporter"] == "dynamo" and cfg["opset"] == 18
    from mmfm.export.onnx import OnnxCLIP
    model, rt = mmfm.load(tmp_path / "ckpt"), OnnxCLIP(tmp_path / "onnx")
    tok = model.tokenizer(["a", "a much longer caption with many words in it"])
    np.testing.assert_allclose(rt.embed_texts(tok["text_ids"], tok["attention_mask"]),
                               model.embed_texts(["a", "a much longer caption with many words in it"]).numpy(),
                               atol=1e-5)
    assert export_main(["--model", str(tmp_path / "ckpt"), "--format", "safetensors", "--out",
                        str(tmp_path / "st")]) == 0
    again = mmfm.load(tmp_path / "st")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.embed_images(x), model.embed_images(x))
