"""``rlprune run``: the staged pipeline, its Tune stages, run configs and presets, and the report."""
