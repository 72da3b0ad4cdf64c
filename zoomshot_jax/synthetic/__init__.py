"""The synthetic-data toolkit of feature distillation (METHODS.md §4).

  prompts         per-class attribute lists -> pairwise covering array -> prompts
                  (JSONL), the input of any text-to-image model
  teacher_filter  the teacher filter: keep the images the teacher classifies as
                  their intended class
No text-to-image model is bundled; the demo world has its own renderer
(`demo/synthetic.py`). `python -m zoomshot_jax.tools.synthetic` runs both.
"""

from zoomshot_jax.synthetic import prompts, teacher_filter

__all__ = ["prompts", "teacher_filter"]
