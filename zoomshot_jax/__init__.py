"""zoomshot_jax: give any pretrained vision encoder CLIP's zero-shot abilities.

Notebook API (see README): `zoomshot_jax.api`.
"""

__version__ = "0.1.0"
