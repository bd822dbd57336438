"""The image-side debiasing projection estimated from data: the attribute's directions in a CLIP's image space,
from items seen in several attribute values (an emoji in each of its skin tones), then projected out of every image
embedding (:func:`mmfm.models.debias.attribute_directions`, :func:`~mmfm.models.debias.attach_image_debias`); with
bias prompts, the prompts' text directions join them and the joint projection acts on images and text alike.

Estimate it on TRAINING shards: directions taken from the evaluation images would fit the very items they are
scored on."""
from __future__ import annotations

from collections import Counter

from mmfm.config import ConfigError

from .audit import _decode_batch, read_samples

__all__ = ["image_directions", "image_debias"]


def image_directions(model, data: str, attribute: str, *, k: int = 3, match_by: str = "base_name",
                     batch_size: int = 64) -> tuple:
    """``(directions (k, d), info)`` from the samples of DATA whose ``match_by`` value occurs with at least two
    values of ``attribute``; ``info``: items, images, each direction's share of the within-item variance."""
    import torch

    samples, _ = read_samples(data, attribute)
    per_item = Counter(s["meta"].get(match_by) for s in samples)
    kept = [s for s in samples if s["meta"].get(match_by) is not None and per_item[s["meta"][match_by]] > 1]
    if not kept:
        raise ConfigError(f"image debias: no '{match_by}' in {data} occurs with two '{attribute}' values")
    from mmfm.models.debias import attribute_directions
    was_training = model.training
    model.eval()
    raw = getattr(model, "_encode_image_raw", None) or model.encode_image
    try:
        with torch.inference_mode():
            Z = torch.cat([raw(_decode_batch(model, kept[i: i + batch_size]), normalize=True).float()
                           for i in range(0, len(kept), batch_size)])
    finally:
        model.train(was_training)
    dirs, var = attribute_directions(Z, [s["meta"][match_by] for s in kept], k)
    return dirs, {"k": int(dirs.shape[0]), "items": len({s["meta"][match_by] for s in kept}), "images": len(kept),
                  "variance_share": [round(v, 4) for v in var], "data": str(data)}


def image_debias(model, data: str, attribute: str, *, prompts: list[str] | None = None, **kw):
    """Attach the image projection estimated on DATA (training shards) to ``model``; returns the model. With
    ``prompts`` (e.g. "light skin tone", ...), their text embeddings join the image directions and the one
    projection onto the complement of the joint span is applied on both sides, images and text: a class prompt
    then keeps no component that any tone direction, seen from either side, could score."""
    import torch

    from mmfm.models.debias import attach_debias, attach_image_debias, embed_prompts, orthogonal_projection

    dirs, info = image_directions(model, data, attribute, **kw)
    if prompts:
        dirs = torch.cat([dirs.double(), embed_prompts(model, prompts).double()])
        info = {**info, "prompts": list(prompts)}
    P = orthogonal_projection(dirs)
    attach_image_debias(model, P, info)
    return attach_debias(model, P, prompts) if prompts else model
