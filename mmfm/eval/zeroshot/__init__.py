"""Zero-shot classification and probes on image folders: ``folder`` (scanning), ``templates`` (prompts),
``classifier`` (the cached text classifier), ``classify`` (``zeroshot_classify``), ``metrics``, ``probe`` (linear
and k-shot probes), ``wise_ft`` (the WiSE-FT sweep) and ``report`` (the zero-shot report files)."""
