"""Caption and VQA evaluation: ``data`` (reading captions and questions), ``runner`` (batching, provenance, the
skipped-image limit), ``caption`` (``mmfm eval caption``), ``vqa`` (``mmfm eval vqa``), and their metrics:
``caption_metrics`` (BLEU, ROUGE-L, CIDEr-D) with ``ptb_tokenize``, ``vqa_metrics`` and ``perplexity``."""
