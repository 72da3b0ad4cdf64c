"""Zero-shot evaluation: class names and templates, the classifier W, the evaluator."""

from zoomshot_jax.evaluation.classifier import build_classifier, encode_texts, l2_normalize
from zoomshot_jax.evaluation.classnames import (DEFAULT_SPLITS, Prompts, get_prompts,
                                                known_datasets)
from zoomshot_jax.evaluation.zeroshot import EvalResult, evaluate, zero_shot_logits

__all__ = ["DEFAULT_SPLITS", "EvalResult", "Prompts", "build_classifier", "encode_texts",
           "evaluate", "get_prompts", "known_datasets", "l2_normalize", "zero_shot_logits"]
