"""``mmfm eval bias``: ``audit`` (samples per group of an attribute, zero-shot and caption runs), ``metrics`` (group
metrics: Wilson intervals, exact McNemar, best-worst gap), ``fairness`` (worst group, bootstrap gap, equalised odds,
MaxSkew/NDKL, wrong-attribute captions), ``compare`` (settings side by side) and ``output`` (table, chart, files)."""
