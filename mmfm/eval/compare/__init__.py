"""``mmfm eval compare``: ``data`` (named data sets and what scores them), ``suite`` (several models on the same data,
paired bootstrap intervals from ``bootstrap``), ``variants`` (size, CPU latency and metric drop of int8 or distilled
variants of one model) and ``report`` (the tables, CSV, HTML and JSON both modes print and write)."""
