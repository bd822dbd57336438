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
