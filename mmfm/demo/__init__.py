"""``mmfm demo``: the end-to-end run on real emoji data (stages, settings, report)."""
