"""Tiny randomly initialised transformers image-to-text models, each saved by transformers' own
``save_pretrained`` together with its own processor (tokenizer built offline with the ``tokenizers``-backed
transformers classes). One builder per family; ``build(family, folder)`` returns the folder."""
from __future__ import annotations

import torch

WORDS = ("a an the cat dog sits on mat red blue green photo of picture what color is it yes no two one "
         "question answer : ? .").split()
FAMILIES = ("blip", "git", "ved", "llava", "blip_vqa")
SIZE = 32                      # image side
_V = dict(hidden_size=32, image_size=SIZE, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
          intermediate_size=64)
_T = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
          max_position_embeddings=64)


def _bert_vocab() -> dict[str, int]:
    return {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS])}


def bert_tokenizer():
    from transformers import BertTokenizer
    return BertTokenizer(vocab=_bert_vocab())


def word_tokenizer(extra_special=()):
    """A WordLevel tokenizer with [PAD] [BOS] [EOS] [UNK] (+ extra special tokens) over WORDS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]", *extra_special, *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", additional_special_tokens=list(extra_special))


def _square(cls, **kw):
    return cls(size={"height": SIZE, "width": SIZE}, do_center_crop=False, **kw)


def _blip(vqa: bool = False):
    import transformers as T
    tok = bert_tokenizer()
    v = len(_bert_vocab())
    text = dict(vocab_size=v, bos_token_id=5, sep_token_id=3, pad_token_id=0, eos_token_id=3, **_T)
    cfg = T.BlipConfig(text_config=text, vision_config=dict(_V), projection_dim=32)
    model = (T.BlipForQuestionAnswering if vqa else T.BlipForConditionalGeneration)(cfg)
    return model, T.BlipProcessor(image_processor=T.BlipImageProcessor(size={"height": SIZE, "width": SIZE}),
                                  tokenizer=tok)


def _git():
    import transformers as T
    tok = bert_tokenizer()
    cfg = T.GitConfig(vision_config=dict(_V), vocab_size=len(_bert_vocab()), bos_token_id=2, eos_token_id=3,
                      pad_token_id=0, **_T)
    proc = T.GitProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                               crop_size={"height": SIZE, "width": SIZE}),
                          tokenizer=tok)
    return T.GitForCausalLM(cfg), proc


def _ved():
    import transformers as T
    tok = word_tokenizer()
    enc = T.ViTConfig(**_V)
    dec = T.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, is_decoder=True, add_cross_attention=True)
    cfg = T.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    proc = T.TrOCRProcessor(image_processor=_square(T.ViTImageProcessor), tokenizer=tok)
    return T.VisionEncoderDecoderModel(cfg), proc


def _llava():
    import transformers as T
    tok = word_tokenizer(["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    text = T.LlamaConfig(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         num_key_value_heads=2, **_T)
    vision = T.CLIPVisionConfig(**_V, projection_dim=32)
    cfg = T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                        vision_feature_select_strategy="default", vision_feature_layer=-1)
    cfg.pad_token_id = 0
    proc = T.LlavaProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                                 crop_size={"height": SIZE, "width": SIZE}),
                            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                            image_token="<image>", num_additional_image_tokens=1)
    return T.LlavaForConditionalGeneration(cfg), proc


_BUILDERS = {"blip": _blip, "git": _git, "ved": _ved, "llava": _llava, "blip_vqa": lambda: _blip(vqa=True)}


def build(family: str, folder, seed: int = 0) -> str:
    """Save a tiny ``family`` model + its processor to ``folder`` with transformers' own save_pretrained."""
    torch.manual_seed(seed)
    model, proc = _BUILDERS[family]()
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return str(folder)
