"""zoomshot_jax: give any pretrained vision encoder CLIP's zero-shot abilities.

Notebook API (see README): `zoomshot_jax.api`.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow serves only tf.data here; its C++ start-up chatter (oneDNN,
# CUDA probing) buries our logs. Users can still set the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
