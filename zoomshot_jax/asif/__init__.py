"""ASIF (METHODS.md §3): zero-shot from unimodal encoders and image–caption anchors.

  relative.py   exact top-k similarities to anchors, sharded over devices and
                hosts, streamed chunk by chunk, merged on anchor updates
  scoring.py    sparse x sparse scores, class decisions, explanations
  model.py      `Asif`, an in-memory API for notebooks and demos
  sources.py    anchor pairs from TSV / JSONL / TFRecord files or tfds
  store.py      the anchor store on disk: shards and manifest
  embed.py      embedding anchors (resumable) and evaluation images
  evaluate.py   the program's evaluation stage, with cached rows

The package exports the computational core only; the modules that read data
(sources, store, embed, evaluate) import TensorFlow and are imported by name.
"""

from zoomshot_jax.asif.model import Asif
from zoomshot_jax.asif.relative import AnchorChunk, Searcher, TopK, in_memory_chunks
from zoomshot_jax.asif.scoring import Scorer, class_scores, explain, index_text

__all__ = ["AnchorChunk", "Asif", "Scorer", "Searcher", "TopK", "class_scores", "explain",
           "in_memory_chunks", "index_text"]
