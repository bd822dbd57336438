"""Small builders shared by several test modules."""
from __future__ import annotations


def word_tokenizer(folder, words) -> str:
    """A real transformers tokenizer over ``[PAD] [BOS] [EOS] [UNK]`` + ``words``, saved to ``folder`` (a small
    vocabulary keeps the LM head, and so the CPU tests, small)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]"] + list(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                            eos_token="[EOS]").save_pretrained(folder)
    return str(folder)


# timm towers whose pooling head is not on the token path (forward_features): ConvNeXt's head.norm, a MAP-pooled
# (SigLIP-style) ViT's attn_pool, an average-pooled ViT's fc_norm. Tiny, 32 wide like tiny_captioner's decoder.
HEADED_TOWERS = {
    "convnext": {"timm_model": "convnext_atto", "image_size": 64,
                 "timm_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}},
    "vit_map": {"timm_model": "vit_tiny_patch16_224", "image_size": 32,
                "timm_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "map"}},
    "vit_avg": {"timm_model": "vit_tiny_patch16_224", "image_size": 32,
                "timm_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "avg"}},
}


def headed_captioner(arch: str) -> dict:
    """A tiny_captioner model section with one of HEADED_TOWERS as its vision tower."""
    import copy
    return {"kind": "captioner", "vision": copy.deepcopy(HEADED_TOWERS[arch]), "embed_dim": 32,
            "decoder": {"arch": "gpt2", "tokenizer": "openclip", "max_length": 24,
                        "config_overrides": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}}}


# ----------------------------------------------------------------------------- Fashion-MNIST IDX files
def write_idx(path, array):
    """``array`` as a gzip IDX file of unsigned bytes, Zalando's Fashion-MNIST format."""
    import gzip
    import struct

    import numpy as np
    array = np.asarray(array, dtype=np.uint8)
    head = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.tobytes())
    return path


def fake_fashion(folder, n_train=40, n_test=30):
    """Fashion-MNIST's four IDX files in ``folder``: random 28x28 images whose pixel (0, 0) is their label."""
    import numpy as np

    from mmfm.demo.fashion_mnist import CLASSES as FASHION_CLASSES
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % len(FASHION_CLASSES)
        images = (rng.random((n, 28, 28)) * 255).astype(np.uint8)
        images[:, 0, 0] = labels                          # each image remembers its label
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder
