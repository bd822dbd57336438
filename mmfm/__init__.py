"""mmfm: multimodal foundation models. Shards -> CLIP / captioner / VQA training -> evaluation."""
__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """Load an mmfm checkpoint (or exported folder): returns a model with ``.preprocess`` and ``.tokenizer``.

    Accepts a checkpoint dir, a run dir, an exported folder, or ``openclip:NAME[:FILE]``; see ``mmfm.models.loading.load_pretrained``.
    """
    from mmfm.models.loading import load_pretrained
    return load_pretrained(checkpoint, device=device)


__all__ = ["__version__", "load"]
