"""mmfm: multimodal foundation models. Shards -> CLIP / captioner / VQA training -> evaluation."""
__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """Load an mmfm checkpoint (or exported folder): returns a model with ``.preprocess`` and ``.tokenizer``.

    Accepts a checkpoint dir, a run dir, an exported (float or int8) folder, or ``openclip:NAME[:FILE]``; see ``mmfm.models.loading.load_pretrained``.
    """
    from mmfm.compress.quantize import is_quantized_dir, load_quantized
    if is_quantized_dir(checkpoint):  # an `mmfm export --format int8` folder
        return load_quantized(checkpoint, device)
    from mmfm.models.loading import load_pretrained
    return load_pretrained(checkpoint, device=device)


__all__ = ["__version__", "load"]
