"""Evaluation: class names and templates, the classifier W, the zero-shot evaluator,
held-out metrics of maps, and the registry (`registry.py`) that programs run
`config.evals` through."""

from zoomshot_jax.evaluation.classifier import build_classifier, encode_texts
from zoomshot_jax.evaluation.classnames import (DEFAULT_SPLITS, Prompts, get_prompts,
                                                known_datasets)
from zoomshot_jax.evaluation.zeroshot import EvalResult, evaluate, zero_shot_logits

__all__ = ["DEFAULT_SPLITS", "EvalResult", "Prompts", "build_classifier", "encode_texts",
           "evaluate", "get_prompts", "known_datasets", "zero_shot_logits"]
