"""Configs of the programs (`--config=configs/<name>.py:<words>`); installed as zoomshot_jax.configs."""
