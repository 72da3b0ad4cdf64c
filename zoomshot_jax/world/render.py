"""Procedural scenes of the demo world: shapes, colours, two renderers, captions.

A scene is one or two objects (shape, colour, size) at random positions and
rotations on a dark or light background. Everything is drawn from a NumPy
generator seeded by (world seed, split, index), so an example does not depend
on which other examples were generated, or in which order.

Renderers:
  clean  flat colours on a flat background (synthetic-looking);
  photo  the same scene with a textured, unevenly lit background, shaded
         objects, colour jitter, blur and sensor noise: a domain shift.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Silhouettes that stay distinct under any rotation (no square/diamond pair).
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "crescent", "ring")
# Saturated hues, distinct from the backgrounds' low-saturation greys.
COLOURS = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (235, 215, 35),
    "green": (40, 165, 55), "cyan": (35, 200, 215), "blue": (40, 75, 220),
    "purple": (135, 50, 190), "pink": (245, 115, 185),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
BACKGROUNDS = ("dark", "light")
RENDERERS = ("clean", "photo")
# Object radius as a fraction of the image side, per size (then jittered).
_RADIUS = {"small": 0.17, "large": 0.29}
_SUPERSAMPLE = 3  # per axis, for anti-aliased edges


def class_name(shape: int, colour: int) -> str:
  return f"{COLOUR_NAMES[colour]} {SHAPES[shape]}"


def class_names() -> list[str]:
  """The 64 shape x colour class names, label = shape * 8 + colour."""
  return [class_name(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: int
  colour: int
  size: int      # index into SIZES
  x: float       # centre, in [0, 1] image coordinates
  y: float
  radius: float  # fraction of the image side
  angle: float   # radians


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Obj, ...]
  background: int                  # index into BACKGROUNDS
  tint: tuple[float, float, float]  # the background's grey, RGB in [0, 255]

  @property
  def label(self) -> int:
    """Shape x colour class of the first object."""
    o = self.objects[0]
    return o.shape * len(COLOURS) + o.colour


def _polygon(n: int, r_outer: float, r_inner: float | None = None) -> np.ndarray:
  """Vertices [k, 2] of a regular n-gon, or of an n-pointed star."""
  if r_inner is None:
    t = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    return np.stack([r_outer * np.cos(t), r_outer * np.sin(t)], -1)
  t = np.pi / 2 + np.pi * np.arange(2 * n) / n
  r = np.where(np.arange(2 * n) % 2 == 0, r_outer, r_inner)
  return np.stack([r * np.cos(t), r * np.sin(t)], -1)


_TRIANGLE = _polygon(3, 1.0)
_STAR = _polygon(5, 1.0, 0.42)


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
  """Even-odd rule: points (u, v) inside the closed polygon."""
  inside = np.zeros(u.shape, bool)
  x0, y0 = poly[:, 0], poly[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
  for a, b, c, d in zip(x0, y0, x1, y1):
    crosses = (b > v) != (d > v)
    with np.errstate(divide="ignore", invalid="ignore"):
      xint = a + (v - b) * (c - a) / (d - b)
    inside ^= crosses & (u < xint)
  return inside


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Mask of the unit-size shape in object coordinates (v points up)."""
  r2 = u * u + v * v
  if shape == "circle":
    return r2 <= 0.85 ** 2
  if shape == "square":
    return np.maximum(abs(u), abs(v)) <= 0.72
  if shape == "triangle":
    return _in_polygon(u, v + 0.15, _TRIANGLE)
  if shape == "star":
    return _in_polygon(u, v, _STAR)
  if shape == "cross":
    return ((abs(u) <= 0.28) & (abs(v) <= 0.9)) | ((abs(v) <= 0.28) & (abs(u) <= 0.9))
  if shape == "heart":
    x, y = u * 1.15, v * 1.15 + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
  if shape == "crescent":
    return (r2 <= 0.9 ** 2) & ((u - 0.38) ** 2 + (v - 0.12) ** 2 > 0.7 ** 2)
  if shape == "ring":
    return (r2 <= 0.9 ** 2) & (r2 >= 0.5 ** 2)
  raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}.")


def sample_scene(rng: np.random.Generator, two_objects_fraction: float) -> Scene:
  """A random scene; a second object (another class) with that probability."""
  n = 2 if rng.random() < two_objects_fraction else 1
  background = int(rng.integers(len(BACKGROUNDS)))
  base = rng.uniform(25, 70) if background == 0 else rng.uniform(175, 230)
  tint = tuple(float(np.clip(base + rng.normal(0, 8), 0, 255)) for _ in range(3))
  classes = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)
  objects = []
  for k in classes:
    size = int(rng.integers(len(SIZES)))
    radius = _RADIUS[SIZES[size]] * rng.uniform(0.9, 1.1)
    if n == 2:
      radius = min(radius, 0.23)  # two large objects must fit side by side
    # Inside the image; a second object is redrawn until it does not touch
    # the first (bounded, so a seed always gives the same scene).
    for _ in range(100):
      x, y = rng.uniform(radius, 1 - radius, size=2)
      if all(np.hypot(x - p.x, y - p.y) > (radius + p.radius) * 0.95 for p in objects):
        break
    objects.append(Obj(shape=int(k) // len(COLOURS), colour=int(k) % len(COLOURS), size=size,
                       x=float(x), y=float(y), radius=float(radius),
                       angle=float(rng.uniform(0, 2 * np.pi))))
  return Scene(objects=tuple(objects), background=background, tint=tint)


def one_object_scene(rng: np.random.Generator, label: int, size: int, background: int,
                     x: float, y: float, angle: float) -> Scene:
  """The scene a prompt describes: one object of class `label` (shape x
  colour), its size and the background as given, its centre near (x, y) and
  kept inside the image; radius and tint jittered as in `sample_scene`."""
  base = rng.uniform(25, 70) if background == 0 else rng.uniform(175, 230)
  tint = tuple(float(np.clip(base + rng.normal(0, 8), 0, 255)) for _ in range(3))
  radius = _RADIUS[SIZES[size]] * rng.uniform(0.9, 1.1)
  x, y = (float(np.clip(v + rng.normal(0, 0.05), radius, 1 - radius)) for v in (x, y))
  obj = Obj(shape=label // len(COLOURS), colour=label % len(COLOURS), size=size, x=x, y=y,
            radius=float(radius), angle=float(angle))
  return Scene(objects=(obj,), background=background, tint=tint)


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Supersampled pixel centres in [0, 1]."""
  n = image_size * _SUPERSAMPLE
  c = (np.arange(n) + 0.5) / n
  return np.meshgrid(c, c)  # (x, y), y down


def _coverage(obj: Obj, gx: np.ndarray, gy: np.ndarray, image_size: int) -> np.ndarray:
  """Anti-aliased coverage [H, W] in [0, 1] of one object."""
  cos, sin = np.cos(obj.angle), np.sin(obj.angle)
  dx, dy = (gx - obj.x) / obj.radius, -(gy - obj.y) / obj.radius
  u, v = cos * dx + sin * dy, -sin * dx + cos * dy
  mask = _inside(SHAPES[obj.shape], u, v).astype(np.float32)
  s = _SUPERSAMPLE
  return mask.reshape(image_size, s, image_size, s).mean(axis=(1, 3))


def _smooth_noise(rng: np.random.Generator, image_size: int, cells: int) -> np.ndarray:
  """Low-frequency noise [H, W] in about [-1, 1]: a bilinearly upsampled grid."""
  g = rng.normal(size=(cells + 1, cells + 1)).astype(np.float32)
  t = np.linspace(0, cells, image_size, dtype=np.float32)
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i
  rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _blur(img: np.ndarray, amount: float) -> np.ndarray:
  """3x3 blur mixed in by `amount` in [0, 1]."""
  p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  box = sum(p[i:i + img.shape[0], j:j + img.shape[1]] for i in range(3) for j in range(3)) / 9
  return (1 - amount) * img + amount * box


def render(scene: Scene, renderer: str, image_size: int,
           rng: np.random.Generator) -> np.ndarray:
  """The scene as uint8 [image_size, image_size, 3]."""
  if renderer not in RENDERERS:
    raise ValueError(f"renderer {renderer!r}: expected one of {RENDERERS}.")
  gx, gy = _grid(image_size)
  img = np.broadcast_to(np.asarray(scene.tint, np.float32),
                        (image_size, image_size, 3)).copy()
  photo = renderer == "photo"
  if photo:
    # Textured background under a smooth illumination gradient.
    texture = _smooth_noise(rng, image_size, 6) * rng.uniform(8, 20)
    img += texture[..., None] + rng.normal(0, 3, size=(1, 1, 3)).astype(np.float32)
  cx = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
  for obj in scene.objects:
    alpha = _coverage(obj, gx, gy, image_size)[..., None]
    colour = np.asarray(COLOURS[COLOUR_NAMES[obj.colour]], np.float32)
    if photo:
      # Colour jitter and shading across the object (a light from one side).
      colour = colour * rng.uniform(0.85, 1.1) + rng.normal(0, 6, size=3)
      light = np.asarray(rng.normal(size=2), np.float32)
      light /= np.linalg.norm(light) + 1e-6
      shade = 1 + 0.25 * ((cx[None, :] - obj.x) * light[0] + (cx[:, None] - obj.y) * light[1]
                          ) / obj.radius
      fill = colour[None, None, :] * shade[..., None]
    else:
      fill = colour[None, None, :]
    img = (1 - alpha) * img + alpha * fill
  if photo:
    gain = 1 + 0.25 * _smooth_noise(rng, image_size, 2)[..., None]
    img = _blur(img * gain, rng.uniform(0.3, 0.9))
    img += rng.normal(0, rng.uniform(3, 9), size=img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ captions

# Phrasings of one object description `d` (e.g. "small red triangle"); the
# demo's prompt templates are drawn from the same phrasings, so the CLIP
# knows every word of them.
_ONE = (
    "a {d} on a {bg} background",
    "a {d}",
    "a photo of a {d}",
    "a picture of a {d}",
    "there is a {d} in the picture",
    "a drawing of a {d}",
    "a {shape} that is {colour}",
    "{colour} {shape} , {size}",
)
_TWO = (
    "a {d1} and a {d2} on a {bg} background",
    "a {d1} next to a {d2}",
    "a picture of a {d1} and a {d2}",
    "there is a {d1} and a {d2} in the picture",
)


def _describe(o: Obj, with_size: bool) -> str:
  words = ([SIZES[o.size]] if with_size else []) + [COLOUR_NAMES[o.colour], SHAPES[o.shape]]
  return " ".join(words)


def captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
  """`n` different phrasings of the scene (sizes mentioned at random)."""
  bg = BACKGROUNDS[scene.background]
  if len(scene.objects) == 1:
    o = scene.objects[0]
    picks = rng.choice(len(_ONE), size=min(n, len(_ONE)), replace=False)
    return [_ONE[i].format(d=_describe(o, bool(rng.integers(2))), bg=bg,
                           shape=SHAPES[o.shape], colour=COLOUR_NAMES[o.colour],
                           size=SIZES[o.size]) for i in picks]
  a, b = scene.objects
  picks = rng.choice(len(_TWO), size=min(n, len(_TWO)), replace=False)
  out = []
  for i in picks:
    first, second = (a, b) if rng.integers(2) else (b, a)
    out.append(_TWO[i].format(d1=_describe(first, bool(rng.integers(2))),
                              d2=_describe(second, bool(rng.integers(2))), bg=bg))
  return out


def vocabulary() -> list[str]:
  """Every word a caption or prompt can contain, sorted."""
  words = set()
  for t in _ONE + _TWO:
    words.update(w for w in t.split() if "{" not in w)
  words.update(SHAPES, COLOUR_NAMES, SIZES, BACKGROUNDS)
  words.update(",", ".")
  return sorted(words)


def example(seed: int, split_id: int, index: int, renderer: str, image_size: int,
            two_objects_fraction: float, num_captions: int) -> dict:
  """One example of the world: image, labels, objects and captions."""
  rng = np.random.default_rng([seed, split_id, index])
  scene = sample_scene(rng, two_objects_fraction)
  image = render(scene, renderer, image_size, rng)
  o = scene.objects[0]
  return {
      "image": image,
      "label": scene.label,
      "shape": o.shape,
      "colour": o.colour,
      "size": o.size,
      "background": scene.background,
      "num_objects": len(scene.objects),
      "objects": {"shape": [p.shape for p in scene.objects],
                  "colour": [p.colour for p in scene.objects],
                  "size": [p.size for p in scene.objects]},
      "captions": captions(scene, rng, num_captions),
  }
