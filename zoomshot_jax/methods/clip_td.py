"""CLIP-TD (METHODS.md §5): targeted, confidence-weighted distillation of a
frozen CLIP's token features into the VL student during task fine-tuning.

The loss of a batch is  task + λ(t) · mean_i( w_i · d_i )  where, per instance i:
  d_i  image_weight · mean over the selected image tokens of dist(P_v s, t)
       + text_weight · the same over the selected text tokens (P_t), with
       dist = 1 − cos (default) or the mean |ŝ − t̂| of unit vectors (L1);
       s are the student's last-layer tokens at the teacher's positions: its
       patch tokens resampled (bilinear) onto the teacher's grid when the
       grids differ, its text tokens through the character alignment of the
       two tokenizations (vl/teacher.py); P_v, P_t learned linear maps to the
       teacher's width
  select  the teacher's image tokens ranked by the attention its [CLS] pays
       them, its text tokens by the EOS token's (last layer, heads averaged);
       the top ceil(ρ · n) of the n valid ones are kept (ties: lower position
       first). Without selection every valid token counts (ρ = 1)
  w_i  the teacher's zero-shot confidence (softmax over the instance's
       candidate prompts of exp(logit_scale) · cos(image, prompt), at the
       right one) divided by its batch mean; without weighting 1
  λ(t) "fixed" λ₀; "linear" λ₀ (1 − t / T); "ramp" λ₀ t / T (ours: the
       term grows in after the task has started; docs/clip_td.md);
       "loss_ratio" λ₀ · sg(task / distill)
VCR: each (image, question, candidate) sequence is distilled; d_i is the mean
over the example's 4, whose candidate sequences are also the confidence's
prompts. Modes (config.distill.mode): none (the baseline), naive (all tokens,
uniform weights), select, weight, clip_td (both).

The projections are the only parameters added (params["td"]); `export` drops
them, so the exported model and its inference cost are the baseline's.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from zoomshot_jax import ops
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import vl_tasks
from zoomshot_jax.models import vl_student

MODES = {"none": (False, False), "naive": (False, False), "select": (True, False),
         "weight": (False, True), "clip_td": (True, True)}   # mode -> (select, weight)
LOSSES = ("cos", "l1")
SCHEDULES = ("fixed", "linear", "ramp", "loss_ratio")
NEG = -1e30


@dataclasses.dataclass(frozen=True)
class Hyper:
  mode: str = "clip_td"
  rho: float = 0.5                 # fraction of the valid tokens kept (select)
  loss: str = "cos"
  schedule: str = "loss_ratio"
  lam: float = 1.0                 # λ₀
  image_weight: float = 1.0
  text_weight: float = 1.0
  total_steps: int = 1             # T of the linear and ramp schedules
  layer: int = -1                  # the student's hidden state distilled (-1: last layer)

  @property
  def select(self) -> bool:
    return MODES[self.mode][0]

  @property
  def weight(self) -> bool:
    return MODES[self.mode][1]


def check(hyper: Hyper, what: str = "config.distill") -> Hyper:
  if hyper.mode not in MODES:
    raise UserError(f"{what}.mode={hyper.mode!r}: expected one of {list(MODES)}.")
  if not 0.0 < hyper.rho <= 1.0:
    raise UserError(f"{what}.rho={hyper.rho}: the fraction of tokens kept must be in (0, 1].")
  if hyper.loss not in LOSSES:
    raise UserError(f"{what}.loss={hyper.loss!r}: expected one of {list(LOSSES)}.")
  if hyper.schedule not in SCHEDULES:
    raise UserError(f"{what}.schedule={hyper.schedule!r}: expected one of {list(SCHEDULES)} "
                    "(the λ(t) of the distillation term).")
  for field in ("lam", "image_weight", "text_weight"):
    if getattr(hyper, field) < 0:
      raise UserError(f"{what}.{field}={getattr(hyper, field)}: expected a weight >= 0.")
  return hyper


def check_layer(hyper: Hyper, num_layers: int, what: str = "config.distill") -> None:
  """hidden_states hold the embeddings and every layer: indices -L-1 .. L."""
  if not -num_layers - 1 <= hyper.layer <= num_layers:
    raise UserError(f"{what}.layer={hyper.layer}: the student has {num_layers} layers; give "
                    f"0 (the embeddings) .. {num_layers}, or -1 for the last.")


def from_config(d, total_steps: int = 1, what: str = "config.distill") -> Hyper:
  """config.distill (configs/vl_finetune.py) as a checked Hyper (and its cache budget)."""
  if not float(d.get("teacher_cache_gb", 0.0)) >= 0:
    raise UserError(f"{what}.teacher_cache_gb={d.teacher_cache_gb}: expected GB >= 0 "
                    "(0: the teacher runs in every step).")
  return check(Hyper(mode=d.mode, rho=float(d.rho), loss=d.loss, schedule=d.schedule,
                     lam=float(d.lam), image_weight=float(d.image_weight),
                     text_weight=float(d.text_weight), total_steps=total_steps,
                     layer=int(d.layer)), what)


def check_grids(cfg: vl_student.VLConfig, teacher_grid: int, what: str = "config.student"):
  """Refuses a student whose image tokens have no grid to resample."""
  if cfg.image_input != "pixels":
    raise UserError(f"{what}.image_input={cfg.image_input!r}: CLIP-TD aligns the student's "
                    "patch tokens with the teacher's grid, and feature tokens have no grid; "
                    "use image_input='pixels'.")
  if cfg.grid < 1 or teacher_grid < 1:
    raise UserError(f"{what}: a {cfg.grid}x{cfg.grid} patch grid cannot be aligned with the "
                    f"teacher's {teacher_grid}x{teacher_grid}.")


def init(params: dict, hidden: int, teacher_dim: int, seed: int = 0) -> dict:
  """The trained parameters: the task's {"encoder", "head"} plus the two
  projections {"td": {"image", "text"}} (LeCun-normal kernels, zero bias)."""
  keys = jax.random.split(jax.random.PRNGKey(seed + 7919), 2)
  proj = {name: {"kernel": np.asarray(jax.random.normal(k, (hidden, teacher_dim))
                                      / math.sqrt(hidden), np.float32),
                 "bias": np.zeros((teacher_dim,), np.float32)}
          for name, k in zip(("image", "text"), keys)}
  return {**params, "td": proj}


def export(params: dict) -> dict:
  """The deployable model: the parameters without the training-only projections."""
  return {k: v for k, v in params.items() if k != "td"}


# ---------------------------------------------------------------- the terms


def select_mask(scores, valid, rho: float):
  """bool [N, T]: each row's top ceil(rho · its valid count) valid tokens by
  `scores` (ties: lower position first); rho = 1 keeps every valid token."""
  valid = valid.astype(bool)
  if rho >= 1.0:
    return valid
  s = jnp.where(valid, scores, NEG)
  order = jnp.argsort(-s, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  keep = jnp.ceil(rho * valid.sum(-1, keepdims=True))
  return valid & (rank < keep)


def token_distance(student, teacher, loss: str):
  """[..., T] per-token distance of projected student and teacher tokens."""
  s, t = ops.l2_normalize(student), ops.l2_normalize(teacher)
  if loss == "cos":
    return 1.0 - (s * t).sum(-1)
  return jnp.abs(s - t).mean(-1)


def masked_mean(x, mask):
  """[N]: the mean of x over each row's mask (0 where the mask is empty)."""
  m = mask.astype(x.dtype)
  return (x * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)


def confidence(image_emb, cand_emb, label, logit_scale):
  """[B] the teacher's softmax probability of the right candidate (0 where
  label < 0); image_emb [B, d], cand_emb [B, C, d]."""
  logits = logit_scale * jnp.einsum("bd,bcd->bc", ops.l2_normalize(image_emb),
                                    ops.l2_normalize(cand_emb))
  p = jax.nn.softmax(logits, axis=-1)
  right = jnp.take_along_axis(p, jnp.maximum(label, 0)[:, None], axis=-1)[:, 0]
  return jnp.where(label >= 0, right, 0.0)


def batch_weights(conf):
  """w_i = c_i / mean(c) (mean weight 1); all ones when every c is 0."""
  mean = conf.mean()
  return jnp.where(mean > 0, conf / jnp.where(mean > 0, mean, 1.0), jnp.ones_like(conf))


def lam_at(hyper: Hyper, step, task, distill):
  if hyper.schedule == "fixed":
    return jnp.float32(hyper.lam)
  if hyper.schedule == "linear":
    return hyper.lam * jnp.clip(1.0 - step / max(hyper.total_steps, 1), 0.0, 1.0)
  if hyper.schedule == "ramp":
    return hyper.lam * jnp.clip(step / max(hyper.total_steps, 1), 0.0, 1.0)
  return hyper.lam * jax.lax.stop_gradient(task / jnp.maximum(distill, 1e-8))


def resample_grid(tokens, grid: int, teacher_grid: int):
  """[N, g², H] row-major patch tokens -> [N, G², H] on the teacher's grid."""
  if grid == teacher_grid:
    return tokens
  n, _, h = tokens.shape
  x = tokens.reshape(n, grid, grid, h)
  x = jax.image.resize(x, (n, teacher_grid, teacher_grid, h), "bilinear")
  return x.reshape(n, teacher_grid * teacher_grid, h)


def _project(p, x):
  return x @ p["kernel"] + p["bias"]


def distill_terms(hyper: Hyper, params, out, teacher_img, teacher_txt, t_align, t_valid,
                  grid: int, teacher_grid: int) -> tuple[jax.Array, dict]:
  """([N] per-sequence d, logged means) of the student's VLOutput `out` over N
  sequences; teacher_img = (tokens [N, P, d], cls attention [N, P]),
  teacher_txt = (tokens [N, Lt, d], EOS attention [N, Lt]), t_align [N, Lt]."""
  h = (out.last_hidden_state if out.hidden_states is None
       else out.hidden_states[hyper.layer]).astype(jnp.float32)
  rho = hyper.rho if hyper.select else 1.0
  patches = resample_grid(h[:, out.num_text + 1:], grid, teacher_grid)
  img_tok, img_att = teacher_img
  img_sel = select_mask(img_att, jnp.ones(img_att.shape, bool), rho)
  d_img = masked_mean(token_distance(_project(params["image"], patches), img_tok, hyper.loss),
                      img_sel)
  txt_tok, txt_att = teacher_txt
  valid = t_valid.astype(bool) & (t_align >= 0)
  aligned = jnp.take_along_axis(h[:, :out.num_text], jnp.maximum(t_align, 0)[..., None], 1)
  txt_sel = select_mask(txt_att, valid, rho)
  d_txt = masked_mean(token_distance(_project(params["text"], aligned), txt_tok, hyper.loss),
                      txt_sel)
  d = hyper.image_weight * d_img + hyper.text_weight * d_txt
  return d, {"td_image": d_img.mean(), "td_text": d_txt.mean(),
             "td_image_tokens": img_sel.sum(-1).mean(), "td_text_tokens": txt_sel.sum(-1).mean()}


# What the loss reads of the frozen teacher, per row of the batch.
TEACHER_OUTPUTS = ("td_image", "td_image_att", "td_text", "td_text_att", "td_conf")


def teacher_outputs(teacher, cp, batch, vcr: bool) -> dict:
  """The teacher on a batch (its fields from vl/pipeline.py's teacher map):
  td_image [B, P, d] patch tokens, td_image_att [B, P] their [CLS]
  attention, td_text [B, (4,) Lt, d] text tokens, td_text_att their EOS
  attention, td_conf [B] its confidence at the right candidate (VCR's
  candidates: the example's 4 sequences)."""
  img_tok, img_att, img_emb = teacher.image(cp, batch["teacher_image"])
  txt_tok, txt_att, txt_emb = teacher.text(cp, batch["t_input_ids"], batch["t_attention_mask"])
  if vcr:
    cand_emb, label = txt_emb, batch["label"]
  else:
    _, _, cand_emb = teacher.text(cp, batch["c_input_ids"], batch["c_attention_mask"])
    label = batch["c_label"]
  conf = confidence(img_emb, cand_emb, label, teacher.logit_scale(cp))
  return dict(zip(TEACHER_OUTPUTS, (img_tok, img_att, txt_tok, txt_att, conf)))


def make_loss_fn(hyper: Hyper, task_hyper: vl_tasks.Hyper, module: vl_student.VLStudent,
                 teacher):
  """The shared step's loss. `teacher` is vl/teacher.py's module with a CLIP
  bound: teacher.image(params, images), teacher.text(params, ids, mask),
  teacher.grid, teacher.logit_scale(params). frozen = {"clip": CLIP params}
  (unused when the batch carries TEACHER_OUTPUTS, the cache's rows);
  model_state = {"step": int32} (the schedule's t, checkpointed with the state)."""
  check(hyper)
  vcr = task_hyper.task == "vcr"
  grid = module.config.grid

  def loss_fn(params, model_state, batch, frozen, rng):
    logits, out = vl_tasks.forward(module, task_hyper, export(params), batch, train=True,
                                   rng=rng, output_hidden_states=hyper.layer != -1)
    task, metrics = vl_tasks.task_loss(task_hyper, logits, batch)
    # Cached rows (vl/teacher_cache.py) carry the teacher's outputs; else it runs here.
    t = ({k: batch[k] for k in TEACHER_OUTPUTS} if TEACHER_OUTPUTS[0] in batch
         else teacher_outputs(teacher, frozen["clip"], batch, vcr))
    img_tok, img_att, txt_tok, txt_att, conf = (t[k] for k in TEACHER_OUTPUTS)
    b = img_tok.shape[0]
    if vcr:     # [B, 4, ...] -> the student's example-major [4B, ...]
      c = txt_tok.shape[1]
      rep = lambda x: jnp.repeat(x, c, axis=0)
      flat = lambda x: x.reshape((b * c,) + x.shape[2:])
      teacher_img = (rep(img_tok), rep(img_att))
      teacher_txt = (flat(txt_tok), flat(txt_att))
      t_align, t_valid = flat(batch["t_align"]), flat(batch["t_attention_mask"])
    else:
      teacher_img, teacher_txt = (img_tok, img_att), (txt_tok, txt_att)
      t_align, t_valid = batch["t_align"], batch["t_attention_mask"]
    d, logged = distill_terms(hyper, params["td"], out, teacher_img, teacher_txt, t_align,
                              t_valid, grid, teacher.grid)
    if vcr:
      d = d.reshape(b, -1).mean(-1)
    conf = jax.lax.stop_gradient(conf)
    w = batch_weights(conf) if hyper.weight else jnp.ones_like(conf)
    distill = (w * d).mean()
    step = model_state["step"]
    lam = lam_at(hyper, step.astype(jnp.float32), task, distill)
    metrics.update(logged, task_loss=task, td_loss=distill, td_lambda=lam,
                   td_confidence=conf.mean())
    return task + lam * distill, (metrics, {"step": step + 1})

  return loss_fn
