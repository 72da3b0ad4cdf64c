"""Command-line helpers: `python -m zoomshot_jax.tools.<name>`."""
