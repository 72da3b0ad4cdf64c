"""CLIP as CLIP-TD's frozen teacher (METHODS.md §5): token features, the
attention that ranks them, and its zero-shot view of an instance.

Device side (pure, jit-able, inside the training step):
  image_tokens  pixels -> patch tokens of the last layer through
                `post_layernorm` and `visual_projection` [B, P, d], the
                attention the [CLS] token pays each patch in the last layer
                (heads averaged) [B, P], and the pooled image embedding [B, d]
  text_tokens   token ids -> token states (after `final_layer_norm`) through
                `text_projection` [B, L, d], the attention the EOS token pays
                each token in the last layer (heads averaged) [B, L], and the
                pooled text embedding [B, d]
HF applies the projections to the pooled token only; applying them per token
is ours (METHODS.md). The EOS token is the last real one (every CLIP
tokenizer, the demo's included, ends a truncated text with it).

Host side (the tf.data pipeline's batch map, vl/pipeline.py):
  TeacherText.encode  the student's texts in the teacher's tokenization, each
                teacher token's aligned student token (by character offsets;
                -1 where none), and the candidate prompts whose softmax gives
                the teacher's confidence (see `candidates`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoomshot_jax.encoders.clip import CLIP
from zoomshot_jax.errors import UserError

# SNLI-VE's confidence prompts, one per label in readers.SNLI_VE_LABELS order
# (entailment, neutral, contradiction): ours (the paper's are not public).
SNLI_VE_TEMPLATES = ("{}", "maybe {}", "not {}")


# ------------------------------------------------------------------ device


def grid_of(clip: CLIP) -> int:
  """The teacher's patch grid side."""
  vc = clip.module.config.vision_config
  return int(vc.image_size) // int(vc.patch_size)


def image_tokens(clip: CLIP, params, images_uint8):
  """(tokens [B, P, d], cls attention [B, P], pooled [B, d]), float32.

  images_uint8: [B, S, S, 3] at any side; resized (bilinear) to the
  teacher's, then normalised with its mean and std.
  """
  side = int(clip.module.config.vision_config.image_size)
  x = images_uint8.astype(jnp.float32)
  if x.shape[1:3] != (side, side):
    x = jax.image.resize(x, (x.shape[0], side, side, x.shape[3]), "bilinear")
  x = clip.preprocess.normalize(x)

  def fn(m, px):
    out = m.vision_model(pixel_values=px, deterministic=True, output_attentions=True)
    tokens = m.visual_projection(m.vision_model.post_layernorm(out.last_hidden_state[:, 1:]))
    cls_att = out.attentions[-1][:, :, 0, 1:].mean(axis=1)
    return tokens, cls_att, m.visual_projection(out.pooler_output)

  out = clip.module.apply({"params": params}, x.astype(jnp.dtype(clip.dtype)), method=fn)
  return tuple(o.astype(jnp.float32) for o in out)


def text_tokens(clip: CLIP, params, input_ids, attention_mask):
  """(tokens [N, L, d], EOS attention [N, L], pooled [N, d]), float32, of
  [N, L] ids; padding rows (mask all 0) give finite values."""
  ids = input_ids.reshape(-1, input_ids.shape[-1])
  mask = attention_mask.reshape(ids.shape)
  eos = jnp.maximum(mask.sum(-1) - 1, 0)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)

  def fn(m, ids, mask, pos):
    out = m.text_model(input_ids=ids, attention_mask=mask, position_ids=pos,
                       deterministic=True, output_attentions=True)
    h = out.last_hidden_state
    att = out.attentions[-1].mean(axis=1)                        # [N, L, L]
    eos_att = jnp.take_along_axis(att, eos[:, None, None], axis=1)[:, 0]
    pooled = jnp.take_along_axis(h, eos[:, None, None], axis=1)[:, 0]
    return m.text_projection(h), eos_att, m.text_projection(pooled)

  out = clip.module.apply({"params": params}, ids, mask, positions, method=fn)
  lead = input_ids.shape[:-1]
  return tuple(o.astype(jnp.float32).reshape(lead + o.shape[1:]) for o in out)


def check_teacher(clip: CLIP, what: str = "config.distill.teacher") -> None:
  """Refuses a CLIP checkpoint without both towers and projections."""
  names = set(clip.params)
  missing = sorted({"vision_model", "text_model", "visual_projection",
                    "text_projection"} - names)
  if missing:
    raise UserError(f"{what}={clip.checkpoint!r} has no {', '.join(missing)}: CLIP-TD needs "
                    "a CLIP with both an image and a text tower (e.g. "
                    "openai/clip-vit-base-patch32).")


# -------------------------------------------------------------------- host


def _offsets(enc, i: int, first: str, second: bool) -> list[tuple[int, int] | None]:
  """Each token's span in `first + " " + second` (None: special/padding)."""
  out = []
  seq_ids = enc.sequence_ids(i)
  for (a, b), s in zip(enc["offset_mapping"][i], seq_ids):
    if s is None or b <= a:
      out.append(None)
    elif s == 1 and second:
      out.append((a + len(first) + 1, b + len(first) + 1))
    else:
      out.append((a, b))
  return out


def align(student_spans: Sequence, teacher_spans: Sequence) -> np.ndarray:
  """int32 [len(teacher_spans)]: for each teacher token, the student token
  whose span holds the teacher token's first character; -1 for the teacher's
  special tokens, padding, and characters no student token covers."""
  end = max([b for s in (*student_spans, *teacher_spans) if s for _, b in [s]] + [0])
  owner = np.full(end + 1, -1, np.int64)
  for i, s in enumerate(student_spans):
    if s:
      owner[s[0]:s[1]] = np.where(owner[s[0]:s[1]] < 0, i, owner[s[0]:s[1]])
  return np.asarray([owner[s[0]] if s else -1 for s in teacher_spans], np.int32)


@dataclasses.dataclass(frozen=True)
class TeacherText:
  """The teacher's side of a batch's text, made next to the student's.

  tokenizer: the CLIP's (fast: character offsets are needed); max_length its
  token budget; candidates: VQA's count of answer prompts (the gold answer
  and the vocabulary's most frequent others); snli_ve_templates as above.
  """
  tokenizer: object
  max_length: int
  vqa_candidates: int = 8
  snli_ve_templates: tuple[str, ...] = SNLI_VE_TEMPLATES

  def __post_init__(self):
    if not getattr(self.tokenizer, "is_fast", False):
      raise UserError("the teacher's tokenizer is not a fast (Rust) tokenizer, so it gives "
                      "no character offsets for aligning its tokens with the student's; "
                      "save the CLIP with its tokenizer.json.")

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                         max_length=self.max_length, return_offsets_mapping=True,
                         return_tensors=None)
    return enc

  def encode(self, student_tokenizer, student_length: int, first: Sequence[str],
             second: Sequence[str] | None) -> dict[str, np.ndarray]:
    """{"t_input_ids", "t_attention_mask", "t_align"} int32 [n, Lt] of the
    texts (pairs joined by a space) and the student's tokenization of them."""
    joint = [f if second is None else f"{f} {s}" for f, s in
             zip(first, second if second is not None else first)]
    s_enc = student_tokenizer(list(first), None if second is None else list(second),
                              padding="max_length", truncation=True,
                              max_length=student_length, return_offsets_mapping=True)
    t_enc = self.tokenize(joint)
    aligned = np.stack([align(_offsets(s_enc, i, first[i], second is not None),
                              _offsets(t_enc, i, joint[i], False))
                        for i in range(len(joint))]).astype(np.int32)
    ids = np.asarray(t_enc["input_ids"], np.int32)
    return {"t_input_ids": ids,
            "t_attention_mask": np.asarray(t_enc["attention_mask"], np.int32),
            "t_align": aligned}

  def candidates(self, task: str, first: Sequence[str], gold: Sequence,
                 answers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The confidence prompts of non-VCR examples (VCR's are its candidate
    sequences): {"c_input_ids", "c_attention_mask"} [n, C, Lt], "c_label" [n]
    (the right prompt; -1: none, the instance gets no distillation weight).

    vqa: "question answer" for the gold answer (an index into `answers`, the
    vocabulary in frequency order; -1 if out of it) and the C - 1 most
    frequent others; snli_ve: the hypothesis in each label's template, gold
    the label index.
    """
    if task == "vqa":
      c = max(2, min(self.vqa_candidates, len(answers)))
      texts, labels = [], []
      for q, g in zip(first, gold):
        g = int(g)
        others = [a for i, a in enumerate(answers[:c]) if i != g][:c - 1]
        pool = ([answers[g]] if g >= 0 else [answers[c - 1]]) + others
        texts += [f"{q} {a}" for a in pool]
        labels.append(0 if g >= 0 else -1)
    elif task == "snli_ve":
      c = len(self.snli_ve_templates)
      texts = [t.format(h) for h in first for t in self.snli_ve_templates]
      labels = [int(g) for g in gold]
    else:
      raise UserError(f"task {task!r} has no confidence prompts here (vcr scores its "
                      "candidate sequences).")
    enc = self.tokenize(texts)
    n = len(first)
    return {"c_input_ids": np.asarray(enc["input_ids"], np.int32).reshape(n, c, -1),
            "c_attention_mask": np.asarray(enc["attention_mask"], np.int32).reshape(n, c, -1),
            "c_label": np.asarray(labels, np.int32)}


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A CLIP bound for `clip_td.make_loss_fn`: its functions take the params."""
  clip: CLIP

  @property
  def grid(self) -> int:
    return grid_of(self.clip)

  @property
  def dim(self) -> int:
    return self.clip.dim

  def image(self, params, images_uint8):
    return image_tokens(self.clip, params, images_uint8)

  def text(self, params, input_ids, attention_mask):
    return text_tokens(self.clip, params, input_ids, attention_mask)

  def logit_scale(self, params):
    return jnp.exp(params["logit_scale"].astype(jnp.float32))


def load(d, source: str, student_cfg) -> tuple[Teacher, TeacherText]:
  """The frozen CLIP of config.distill `d` (teacher: hub id or directory;
  world data: "" = the demo's shipped tiny CLIP) and its text side, checked:
  both towers, and a patch grid the student's can be resampled onto."""
  from zoomshot_jax import encoders  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.methods import clip_td  # pylint: disable=g-import-not-at-top
  path = d.teacher
  if not path:
    if source != "world":
      raise UserError("config.distill.teacher is empty: give a CLIP checkpoint (hub id or "
                      "directory), e.g. openai/clip-vit-base-patch32.")
    from zoomshot_jax.demo import shipped  # pylint: disable=g-import-not-at-top
    path = shipped.verify("clip")
  try:
    clip = encoders.load_clip(path)
  except UserError as e:
    raise UserError(f"config.distill.teacher={path!r}: {e} CLIP-TD's teacher is a CLIP with "
                    "an image and a text tower.") from e
  check_teacher(clip)
  clip_td.check_grids(student_cfg, grid_of(clip))
  text = TeacherText(clip.tokenizer, int(d.teacher_max_length or clip.max_length),
                     int(d.vqa_candidates), tuple(d.snli_ve_templates))
  return Teacher(clip), text
