"""Vision-language tasks (VQA v2 / VQA-CP v2, SNLI-VE, VCR): file readers,
protocols, pipelines, metrics and the fine-tuning evaluator.

Formats and metrics: METHODS.md, "Data formats and metrics for the VL tasks".
Modules: files (reading), readers (the three datasets' records), protocols
(low-shot subsets, domain-shift splits), vqa_eval (the official VQA metric),
pipeline (tf.data batches), evaluate (the `vl_task` evaluator).
"""
