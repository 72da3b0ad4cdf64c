"""Input: example sources (tfds, image folders) and tf.data pipelines."""

from zoomshot_jax.data.pipeline import as_numpy, eval_batches, preprocess_image, train_batches
from zoomshot_jax.data.sources import FOLDER_PREFIX, Source, folder_source, get_source, tfds_source

__all__ = ["FOLDER_PREFIX", "Source", "as_numpy", "eval_batches", "folder_source", "get_source",
           "preprocess_image", "tfds_source", "train_batches"]
