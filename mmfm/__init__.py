"""mmfm: multimodal foundation models. Shards -> CLIP / captioner / VQA training -> evaluation."""
from .version import __version__


def load(spec, device="cpu", expect=None):
    """Load any mmfm model: a checkpoint or run folder, an exported or int8 folder, or ``openclip:NAME[:FILE]``.

    Returns the model (eval mode) with ``.preprocess``, ``.tokenizer`` and ``.generate_config``; see
    :func:`mmfm.models.checkpoint.load`.
    """
    from mmfm.models.checkpoint import load as _load
    return _load(spec, device=device, expect=expect)


__all__ = ["__version__", "load"]
