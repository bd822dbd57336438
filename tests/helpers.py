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
