"""Package data shipped inside the wheel: ``configs/`` (named models, experiments, decoding presets, the demo's
configs) and ``data_recipes/``. In a source checkout these are links to the top-level folders, so the tree keeps
one copy; read them through :func:`mmfm.config.resources.resource_dir`."""
