"""The VL student's tasks (METHODS.md §5): heads, losses and accuracies; `Hyper`,
`init` and `make_loss_fn` in the shape of the repo's methods.

  vqa      answer classification on the pooled token: ViLT's classifier
           Dense(2h)-LayerNorm-GELU-Dense(num_answers); BCE-with-logits against
           the soft targets (vl.soft_targets), summed over answers, averaged
           over the batch
  snli_ve  the same classifier with 3 outputs (vl.SNLI_VE_LABELS order; the
           shape is ours, ViLT has no SNLI-VE head); softmax cross-entropy
  vcr      multiple choice: each (image, question, candidate) is one sequence,
           scored by Dense(1) on its pooled token (the shape of HF's
           multiple-choice heads); cross-entropy over the 4 candidates. The
           same head serves Q->A and QA->R; for QA->R the right answer follows
           the question in the first segment (`vcr_text_pairs`)

Batches (numpy or jax arrays):
  input_ids, attention_mask, token_type_ids (optional)  [B, L]; vcr [B, 4, L]
  image         [B, S, S, C] pixels or [B, T, D_img] features (one per example)
  image_mask    [B, T] (optional)
  targets       vqa: [B, num_answers] soft scores in [0, 1]
  label         snli_ve: [B] in 0..2; vcr: [B] in 0..3
The CLIP-TD method builds on `forward` (it also needs the student's hidden
states and attentions) and `task_loss`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError
from zoomshot_jax.models import vl_student

TASKS = ("vqa", "snli_ve", "vcr")
SNLI_VE_CLASSES = 3
VCR_CHOICES = 4
VCR_MODES = ("q2a", "qa2r")


@dataclasses.dataclass(frozen=True)
class Hyper:
  task: str = "vqa"            # "vqa" | "snli_ve" | "vcr"
  num_answers: int = 3129      # vqa: the answer vocabulary's size (3,129 for VQA v2)


def check(hyper: Hyper) -> Hyper:
  if hyper.task not in TASKS:
    raise UserError(f"config.task={hyper.task!r}: expected one of {list(TASKS)}.")
  if hyper.task == "vqa" and hyper.num_answers < 1:
    raise UserError(f"config.num_answers={hyper.num_answers}: set it to the size of the "
                    "answer vocabulary (vl.build_answer_vocab).")
  return hyper


class ClassifierHead(nn.Module):
  """ViLT's VQA classifier: Dense(2h)-LayerNorm-GELU-Dense(num_outputs)."""
  hidden_size: int
  num_outputs: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled):
    init = jax.nn.initializers.normal(0.02)
    x = nn.Dense(2 * self.hidden_size, dtype=self.dtype, kernel_init=init)(pooled)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(self.num_outputs, dtype=self.dtype, kernel_init=init)(x)


class ChoiceHead(nn.Module):
  """One score per (image, question, candidate) sequence."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled):
    return nn.Dense(1, dtype=self.dtype,
                    kernel_init=jax.nn.initializers.normal(0.02))(pooled)[..., 0]


def head(hyper: Hyper, cfg: vl_student.VLConfig) -> nn.Module:
  dtype = params_lib.compute_dtype(cfg.dtype)
  if hyper.task == "vcr":
    return ChoiceHead(dtype=dtype)
  outputs = hyper.num_answers if hyper.task == "vqa" else SNLI_VE_CLASSES
  return ClassifierHead(cfg.hidden_size, outputs, dtype=dtype)


def init(student_params: dict, cfg: vl_student.VLConfig, hyper: Hyper, seed: int = 0) -> dict:
  """The trained parameters: {"encoder": the student's, "head": the task head's}."""
  check(hyper)
  pooled = jnp.zeros((1, cfg.hidden_size), jnp.float32)
  head_params = head(hyper, cfg).init(jax.random.PRNGKey(seed), pooled)["params"]
  return {"encoder": student_params, "head": jax.device_get(head_params)}


def forward(module: vl_student.VLStudent, hyper: Hyper, params: dict, batch, *,
            train: bool = False, rng=None, output_hidden_states: bool = False,
            output_attentions: bool = False):
  """(float32 logits, VLOutput) of a batch: logits [B, num_answers] (vqa),
  [B, 3] (snli_ve) or [B, 4] (vcr); the VLOutput is over B sequences, or
  B * 4 for vcr (example-major: row 4 b + c is candidate c of example b)."""
  ids, mask = batch["input_ids"], batch.get("attention_mask")
  types, image, image_mask = batch.get("token_type_ids"), batch["image"], batch.get("image_mask")
  if hyper.task == "vcr":
    if ids.ndim != 3:
      raise UserError(f"a vcr batch's input_ids are [batch, {VCR_CHOICES}, length]; got shape "
                      f"{tuple(ids.shape)}.")
    b, c, length = ids.shape
    flat = lambda x: None if x is None else x.reshape(b * c, length)
    ids, mask, types = flat(ids), flat(mask), flat(types)
    # Each candidate sequence sees its example's image: repeat, not tile.
    image = jnp.repeat(image, c, axis=0)
    image_mask = None if image_mask is None else jnp.repeat(image_mask, c, axis=0)
  out = vl_student.encode(module, params["encoder"], ids, mask, types, image, image_mask,
                          train=train, rng=rng, output_hidden_states=output_hidden_states,
                          output_attentions=output_attentions)
  logits = head(hyper, module.config).apply({"params": params["head"]}, out.pooled)
  logits = logits.astype(jnp.float32)
  if hyper.task == "vcr":
    logits = logits.reshape(b, c)
  return logits, out


# ------------------------------------------------------------ losses, metrics


def vqa_loss(logits, targets):
  """BCE-with-logits [B, A] vs soft targets [B, A]: summed over answers, mean over B."""
  return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1).mean()


def cross_entropy(logits, labels):
  """Softmax cross-entropy [B, K] vs integer labels [B], mean over B."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def correct(logits, labels):
  """[B] bool: the argmax is the label."""
  return jnp.argmax(logits, -1) == labels


def accuracy(logits, labels):
  """SNLI-VE, VCR Q->A and QA->R accuracy (fraction) from logits."""
  return correct(logits, labels).mean()


def vqa_score(logits, targets):
  """Mean soft target of the predicted answer: the official VQA accuracy when
  the targets are vl.soft_targets and the answer is in the vocabulary (its
  leave-one-out average); vl.score_predictions gives the official number."""
  pred = jnp.argmax(logits, -1)
  return jnp.take_along_axis(targets, pred[:, None], axis=-1)[:, 0].mean()


def vcr_accuracies(answer_logits, answer_label, rationale_logits, rationale_label) -> dict:
  """{"q2a", "qa2r", "q2ar"} fractions; Q->AR counts an example right when both are."""
  a, r = correct(answer_logits, answer_label), correct(rationale_logits, rationale_label)
  return {"q2a": a.mean(), "qa2r": r.mean(), "q2ar": (a & r).mean()}


def task_loss(hyper: Hyper, logits, batch) -> tuple[jax.Array, dict]:
  """(loss, metrics) of a task's logits on a batch."""
  if hyper.task == "vqa":
    targets = batch["targets"].astype(jnp.float32)
    return vqa_loss(logits, targets), {"vqa_score": vqa_score(logits, targets)}
  labels = batch["label"]
  return cross_entropy(logits, labels), {"accuracy": accuracy(logits, labels)}


def make_loss_fn(hyper: Hyper, module: vl_student.VLStudent):
  """The shared step's loss: the task loss of the student + head, dropout on."""
  check(hyper)

  def loss_fn(params, model_state, batch, frozen, rng):
    del frozen
    logits, _ = forward(module, hyper, params, batch, train=True, rng=rng)
    loss, metrics = task_loss(hyper, logits, batch)
    return loss, (metrics, model_state)

  return loss_fn


# -------------------------------------------------------------------- text


def vcr_text_pairs(question: str, choices: Sequence[str], answer: str | None = None
                   ) -> list[tuple[str, str]]:
  """The 4 (first, second) segment pairs of a VCR example, for a tokenizer's
  text / text_pair: Q->A (question, answer_i); QA->R, given the right
  `answer`: (question + " " + answer, rationale_i)."""
  if len(choices) != VCR_CHOICES:
    raise UserError(f"a VCR example has {VCR_CHOICES} choices; got {len(choices)}.")
  first = question if answer is None else f"{question} {answer}"
  return [(first, c) for c in choices]


def vcr_example_pairs(example, mode: str) -> list[tuple[str, str]]:
  """`vcr_text_pairs` of a `vl.VCRExample` for mode "q2a" or "qa2r"."""
  if mode not in VCR_MODES:
    raise UserError(f"VCR mode {mode!r}: expected one of {list(VCR_MODES)}.")
  if mode == "q2a":
    return vcr_text_pairs(example.question, example.answer_choices)
  if example.answer_label is None:
    raise UserError(f"VCR example {example.annot_id}: QA->R needs the right answer, and it "
                    "has no answer_label (the test split has none); use train or val.")
  return vcr_text_pairs(example.question, example.rationale_choices,
                        example.answer_choices[example.answer_label])
