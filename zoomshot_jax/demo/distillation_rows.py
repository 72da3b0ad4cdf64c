"""The demo's feature-distillation rows (METHODS.md §4 on the world).

The world's "text-to-image model" (demo/synthetic.py) renders the prompt
builder's prompts for the 64 classes as clean images; the distill program
trains config.distill.student on them once per loss (`l2`, and
`contrastive`: alpha = 1), and evaluates each student zero-shot on the clean
and the photo world's `test` (the synthetic -> real shift), next to the
teacher on both.
"""

from __future__ import annotations

import os

import ml_collections

from zoomshot_jax import encoders, world
from zoomshot_jax.configs import common
from zoomshot_jax.configs import distill as distill_config
from zoomshot_jax.demo import synthetic
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import registry
from zoomshot_jax.programs import distill
from zoomshot_jax.world import render


def student_config(config, loss: str, clip_dir: str, images: str, data_dir: str,
                   tests: dict[str, str], prompts: dict[str, str]):
  """The distill program's config for one loss on the world's synthetic images.

  tests: {renderer: tfds name} of the test splits it is evaluated on.
  """
  d = config.distill
  c = distill_config.get_config(d.student)
  c.seed = config.seed
  c.clip = clip_dir
  c.data_dir = data_dir
  c.data.update(dataset="folder:" + images, classnames_file=prompts["classnames"],
                templates=tuple(config.map_templates))
  c.train.update(batch_size=d.batch_size, epochs=d.epochs, log_every=50,
                 checkpoint_every=1_000_000)
  c.optimizer.learning_rate = d.learning_rate
  if loss == "contrastive":
    c.distill.alpha = 1.0
    if d.contrastive_text == "captions":   # synthetic.write's captions/ beside images/
      c.data.captions_dir = os.path.join(os.path.dirname(images), "captions")
    elif d.contrastive_text != "class_prompts":
      raise UserError(f"config.distill.contrastive_text={d.contrastive_text!r}: expected "
                      "'captions' or 'class_prompts'.")
  else:
    c.distill.loss = loss
  c.evals = ml_collections.ConfigDict({r: _eval_group(c, name, config, prompts)
                                       for r, name in tests.items()})
  c.reference_clip = False
  c.mesh = config.mesh
  return c


def _eval_group(c, dataset: str, config, prompts):
  """A zero-shot evaluator of one world's test split with the demo's prompts."""
  return common.zeroshot_eval(dataset, c, split="test", cache_dir="none",
                              batch_size=config.batch_size,
                              classnames_file=prompts["classnames"],
                              templates_file=prompts["eval_templates"])


def run(config, workdir, data_dir, clip_dir, prompts, mesh, stage, timings) -> dict:
  """Feature distillation on the world's synthetic images: a row per loss,
  each on the clean and photo tests, plus the teacher on both."""
  w = config.world
  micro = w.scale == "micro"
  # The photo world's test plays the "real" images: only its test split is
  # generated (the run's own world is prepared already).
  tests = {r: f"shapes_world/{world.config_name(r, w.seed, micro, r != w.renderer)}"
           for r in render.RENDERERS}
  for r in render.RENDERERS:
    if r != w.renderer:
      name = world.config_name(r, w.seed, micro, test_only=True)
      with stage(f"world {name} (the students' test)", timings):
        world.prepare(name, data_dir)
  with stage("synthetic images", timings):
    images = synthetic.write(os.path.join(workdir, "synthetic"),
                             config.distill.images_per_prompt, w.seed, world.IMAGE_SIZE)
  out = {"rows": {}, "losses": list(config.distill.losses)}
  for loss in config.distill.losses:
    with stage(f"distill: {loss}", timings):
      c = student_config(config, loss, clip_dir, images, data_dir, tests, prompts)
      res = distill.run(c, os.path.join(workdir, "distill", loss))
      out["rows"][loss] = {r: res["results"]["student"][name] for r, name in tests.items()}
      out["params"] = res["params"]
  with stage("teacher on both tests", timings):
    evals = student_config(config, "l2", clip_dir, images, data_dir, tests, prompts).evals
    res = registry.run(evals, registry.Model(encoders.load_clip(clip_dir)), mesh)
    out["teacher"] = {r: res[name] for r, name in tests.items()}
  out["images"] = int(sum(len(f) for _, _, f in os.walk(images)))
  out["student"] = config.distill.student
  return out
