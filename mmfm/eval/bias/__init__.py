"""``mmfm eval bias``: ``audit`` (samples per group of an attribute, zero-shot and caption runs), ``metrics`` (group
metrics: Wilson intervals, exact McNemar, best-worst gap) and ``output`` (table, chart and files)."""
