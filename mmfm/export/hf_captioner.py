"""``--format transformers`` for a transformers captioner (``model.source: hf:...``, kind captioner): the folder
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` open (LoRA already merged
by ``mmfm.load``), checked right after writing: the reloaded model's logits against mmfm's on fresh inputs
(max abs diff <= 1e-5, recorded in ``mmfm_export.json``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

__all__ = ["export_hf_captioner"]


def _batch(model) -> dict:
    from PIL import Image

    images = [Image.new("RGB", (40, 32), (200, 30, 30)), Image.new("RGB", (32, 48), (20, 40, 220))]
    pv = torch.stack([model.image_transform()(i) for i in images])
    rows = [model.layout.right_pad(*model.sequence(model.encode_plain(p), t)) for p, t in
            (("", "a red photo"), ("a photo of", "blue"))]
    return {"image": pv, "text_ids": torch.stack([r["text_ids"] for r in rows]),
            "attention_mask": torch.stack([r["attention_mask"] for r in rows])}


def export_hf_captioner(model, out_dir: str | os.PathLike, *, source: str | None = None, check: bool = True,
                        write=None, finish=None) -> dict:
    """Write the transformers folder (weights, config, generation config, processor); ``write`` / ``finish``
    are the shared atomic writer and checker of :mod:`mmfm.export.library`."""
    import transformers

    out = Path(out_dir).resolve()
    cls_name = type(model.hf).__name__
    info: dict = {"format": "mmfm-transformers-export/1", "kind": "captioner", "class": cls_name,
                  "loader": f"transformers.AutoModelForImageTextToText.from_pretrained('{out}') + "
                            f"transformers.AutoProcessor.from_pretrained('{out}')"}

    def fill(tmp: Path) -> None:
        model.save_transformers(tmp)
        info["files"] = sorted(p.name for p in tmp.iterdir())

    write(out, fill, info, source)
    if not check:
        return info
    try:
        ref = transformers.AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()
        transformers.AutoProcessor.from_pretrained(str(out))
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    model = model.float().eval().cpu()
    batch = _batch(model)
    with torch.no_grad():
        a = model(**batch)["logits"]
        model.hf, saved = ref, model.hf          # the same glue over the reloaded library model
        try:
            b = model(**batch)["logits"]
        finally:
            model.hf = saved
    return finish(out, info, float((a - b).abs().max()), "transformers")
