"""mmfm: multimodal foundation models. Shards -> CLIP / captioner / VQA training -> evaluation."""
__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """Load an mmfm checkpoint (or exported folder): returns a model with ``.preprocess`` and ``.tokenizer``.

    See ``mmfm.models.checkpoint.load_pretrained``.
    """
    from mmfm.models.loading import load_pretrained
    return load_pretrained(checkpoint, device=device)


__all__ = ["__version__", "load"]
