"""The demo world: procedural shapes, and its tfds dataset `shapes_world`.

Importing this package registers `shapes_world` with tfds.
"""

from zoomshot_jax.world import render
from zoomshot_jax.world.builder import (IMAGE_SIZE, SPLIT_SIZES, ShapesWorld, ShapesWorldConfig,
                                        config_name, prepare)

__all__ = ["IMAGE_SIZE", "render", "ShapesWorld", "ShapesWorldConfig", "config_name", "prepare",
           "SPLIT_SIZES"]
