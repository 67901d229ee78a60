"""A small procedural inspection dataset ("coil": a long strip of brushed/rolled steel) in MVTec AD layout, made on
the fly.

The quick start trains on it without any download:

    root/coil/train/good/000.png ...                       (256 high x 1024 wide RGB, rolled along the long axis)
    root/coil/test/good/000.png ...
    root/coil/test/<defect>/000.png ...
    root/coil/ground_truth/<defect>/000_mask.png ...      (0/255, exactly the altered pixels)

The test defects (scratch, dent, crack, stain) are shapes that DRAEM's training simulation (Perlin blobs of
pasted texture) never produces, so a good score means the model learnt "normal", not the simulator. Defect sizes
are in pixels of the 256 x 1024 strip (scaled with `shape`); hairlines are 1-2 px wide and strong enough to stay
visible when the strip is shrunk to ~0.6 of its size.
Every image has its own generator seeded from (seed, split, defect, index), so an image does not change when
the counts of other images do. Generation is vectorised numpy/cv2: the default set takes a few seconds.
"""
import logging
from pathlib import Path

import cv2
import numpy as np

from utils.synthesis import strokes
from utils.synthesis.dataset_folder import MARKER, make_once  # noqa: F401  (MARKER: part of this module's API)

log = logging.getLogger(__name__)

DEMO_ROOT = Path("data") / "demo"  # where train.py and detect.py put and find the demo, relative to the cwd
DEMO_CLASS = "coil"
DEFECT_TYPES = ("scratch", "dent", "crack", "stain")
SHAPE = (256, 1024)  # (height, width) of the strip; defect sizes below are in its pixels
FORMAT_VERSION = 2  # bump when the generator changes, so cached copies are regenerated

_ALPHA_MIN = 0.15  # alpha below this is dropped, so the mask (alpha > 0) covers exactly the altered pixels
_MAX_TILT = 2.0  # degrees: the rolling direction is never perfectly aligned with the camera


# ---------------------------------------------------------------------------------------------- normal surface
def _streaks(rng, shape, length):
    """(H, W) zero-mean unit-std horizontal streak field: fine brushing lines plus per-row roll marks."""
    h, w = shape
    fine = cv2.blur(rng.standard_normal((h, w), dtype=np.float32), (length, 1))  # average along x only
    rows = cv2.GaussianBlur(rng.standard_normal((h, 1), dtype=np.float32), (1, 0), 0.8)  # (H, 1) per row
    field = fine / fine.std() + 0.6 * rows / rows.std()  # (H, W) by broadcasting
    return field / field.std()


def _lighting(rng, shape):
    """(H, W) low-frequency illumination: tilt, vignette and a few soft blotches, roughly in [-0.1, 0.1]."""
    h, w = shape
    y, x = np.mgrid[-1:1:h * 1j, -1:1:w * 1j].astype(np.float32)  # both axes span [-1, 1]: an elliptic vignette
    gx, gy = rng.uniform(-0.05, 0.05, size=2)
    vignette = rng.uniform(0.0, 0.08) * (x ** 2 + y ** 2) / 2
    cells = (4, max(4, round(4 * w / h)))  # (rows, cols) of blotches ~ h/4 px wide whatever the aspect
    blotch = cv2.resize(rng.standard_normal(cells).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return gx * x + gy * y - vignette + 0.015 * blotch


def brushed_metal(rng, shape=SHAPE):
    """One normal "coil" image: float32 (H, W, 3) RGB in [0, 1], brushed along the long (x) axis."""
    h, w = shape
    tan = np.tan(np.radians(_MAX_TILT))
    big = (h + int(np.ceil(w * tan)) + 4, w + int(np.ceil(h * tan)) + 4)  # margin: a tilted crop stays covered
    field = _streaks(rng, big, length=max(3, w // 8))
    angle = rng.uniform(-_MAX_TILT, _MAX_TILT)
    rot = cv2.getRotationMatrix2D((big[1] / 2, big[0] / 2), angle, 1.0)
    field = cv2.warpAffine(field, rot, big[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    oy, ox = (big[0] - h) // 2, (big[1] - w) // 2
    field = field[oy:oy + h, ox:ox + w]  # (H, W)

    base = rng.uniform(0.42, 0.6)  # exposure differs between shots
    contrast = rng.uniform(0.025, 0.04)  # streak strength: well below the defects' 0.15-0.35
    grey = base + _lighting(rng, shape) + contrast * field
    tint = np.array([0.97, 0.99, 1.03], np.float32) + rng.uniform(-0.01, 0.01, size=3).astype(np.float32)
    img = grey.astype(np.float32)[..., None] * tint  # (H, W, 3) cold steel tint
    img += 0.006 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    return img


# ---------------------------------------------------------------------------------------------- defects
# Each returns (alpha (H, W) in [0, 1], delta (H, W, 3) or (3,)): the image becomes img + alpha * delta.
def _scale(shape):
    return min(shape[0] / SHAPE[0], shape[1] / SHAPE[1])  # the sizes below are for the 256 x 1024 strip


def _placed(rng, shape, make, margin, attempts=100):
    """A stroke shape from make() placed inside the image; a new shape (a new direction) while one does not fit.
    A stroke longer than the strip is high fits only lying along it: a few draws find such a direction."""
    allowed = strokes.interior(shape, margin)
    for _ in range(attempts):
        lines = strokes.place(rng, make(), allowed)
        if lines is not None:
            return lines
    raise ValueError(f"no stroke of this size fits a {shape[0]}x{shape[1]} image")


def scratch(rng, shape):
    """Hairline, brighter or darker: 1-2 px wide, 80-300 px long, gently curved."""
    s = _scale(shape)
    length = rng.uniform(80, 300) * s
    lines = _placed(rng, shape, lambda: [strokes.curve(rng, length)], margin=3)
    alpha = strokes.draw_polylines(shape, lines, thickness=max(1.0, rng.uniform(1.0, 2.0) * s))
    return alpha, np.full(3, rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.3), np.float32)


def dent(rng, shape):
    """Small round depression or bump lit from one side: a bright and a dark half-moon, radius 5-15 px."""
    h, w = shape
    r = max(2.0, rng.uniform(5, 15) * _scale(shape))
    cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (x - cx) / r, (y - cy) / r
    rho2 = u ** 2 + v ** 2
    inside = np.clip(1 - rho2, 0, None)
    height = inside ** 2  # smooth dome, 0 at the rim
    light = rng.uniform(0, 2 * np.pi)
    # Lambert-like shading: the slope facing the light is brighter; -4u(1-rho2) is d(height)/du.
    shade = -4 * inside * (u * np.cos(light) + v * np.sin(light)) / 1.54  # ~[-1, 1]
    depth = rng.choice([-1.0, 1.0])  # dent (dark centre) or bump (bright centre)
    amp = rng.uniform(0.25, 0.35)
    delta = amp * (0.7 * shade + 0.5 * depth * height)
    alpha = np.clip((1 - np.sqrt(rho2)) * r, 0, 1)  # 1 inside, 1-px soft rim
    return alpha, np.repeat(delta[..., None], 3, axis=2)


def crack(rng, shape):
    """Dark jagged hairline: 1-1.5 px wide, a 60-250 px main line with 1-3 side branches."""
    s = _scale(shape)
    length = rng.uniform(60, 250) * s
    branches = int(rng.integers(1, 4))
    lines = _placed(rng, shape, lambda: strokes.crack_lines(rng, length, branches, step=max(1.0, 4.0 * s)),
                    margin=3)
    alpha = strokes.draw_polylines(shape, lines, thickness=max(1.0, rng.uniform(1.0, 1.5) * s))
    return alpha, np.full(3, -rng.uniform(0.22, 0.32), np.float32)


def stain(rng, shape):
    """Soft-edged irregular discoloured patch (rust/oil brown, darker), 12-35 px radius."""
    h, w = shape
    radius = max(3.0, rng.uniform(12, 35) * _scale(shape))
    c = rng.uniform(radius + 2, w - radius - 2), rng.uniform(radius + 2, h - radius - 2)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros(shape, np.float32)
    for _ in range(rng.integers(4, 8)):  # a few overlapping elongated gaussians make an irregular outline
        dx, dy = x - (c[0] + rng.uniform(-0.6, 0.6) * radius), y - (c[1] + rng.uniform(-0.6, 0.6) * radius)
        a = rng.uniform(0, np.pi)
        along, across = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
        sx, sy = rng.uniform(0.25, 0.6, size=2) * radius
        field += np.exp(-(along ** 2 / (2 * sx ** 2) + across ** 2 / (2 * sy ** 2)))
    cells = (max(3, int(h / (0.6 * radius))), max(3, int(w / (0.6 * radius))))  # noise cells of ~radius/2
    noise = cv2.resize(rng.standard_normal(cells).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    t = np.clip((field * (1 + 0.35 * noise) - 0.4) / 0.5, 0, 1)  # ragged outline; 0 far from the blobs
    alpha = t * t * (3 - 2 * t) * np.clip(0.85 + 0.15 * noise, 0.6, 1.0)  # smoothstep: soft edge
    colour = np.array([0.0, -0.06, -0.13], np.float32) - rng.uniform(0.1, 0.16)  # brownish and darker
    return alpha, colour.astype(np.float32)


DEFECTS = {"scratch": scratch, "dent": dent, "crack": crack, "stain": stain}


def add_defect(rng, img, kind):
    """Apply one defect of `kind` to a (H, W, 3) float image; returns (image, bool mask (H, W))."""
    alpha, delta = DEFECTS[kind](rng, img.shape[:2])
    alpha = np.where(alpha >= _ALPHA_MIN, alpha, 0.0).astype(np.float32)  # unaltered <=> outside the mask
    return img + alpha[..., None] * delta, alpha > 0


# ---------------------------------------------------------------------------------------------- writing
def _to_png(path, img):
    rgb = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)  # rounded: + 0.5, then truncated
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def _image_rng(seed, split, kind, i):
    # Split/kind as small integers: each image's stream depends only on (seed, where it is, index).
    kinds = ("good",) + DEFECT_TYPES
    return np.random.default_rng([seed, ("train", "test").index(split), kinds.index(kind), i])


def _write_all(out, n_train, n_test_good, n_test_per_defect, shape, seed):
    for split, kind, count in [("train", "good", n_train), ("test", "good", n_test_good)]:
        folder = out / split / kind
        folder.mkdir(parents=True)
        for i in range(count):
            _to_png(folder / f"{i:03d}.png", brushed_metal(_image_rng(seed, split, kind, i), shape))
    for kind in DEFECT_TYPES:
        img_dir, gt_dir = out / "test" / kind, out / "ground_truth" / kind
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n_test_per_defect):
            rng = _image_rng(seed, "test", kind, i)
            img, mask = add_defect(rng, brushed_metal(rng, shape), kind)
            _to_png(img_dir / f"{i:03d}.png", img)
            cv2.imwrite(str(gt_dir / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)


def make_demo_dataset(root, n_train=120, n_test_good=20, n_test_per_defect=10, shape=SHAPE, seed=0):
    """Generate (once) the demo class in MVTec layout under `root` and return `root/coil`.

    shape: (height, width) of every image. A complete copy made with the same parameters is reused; an
    interrupted or differently parameterised one is replaced (dataset_folder.make_once: temp folder, marker last).
    """
    shape = tuple(int(v) for v in shape)
    params = dict(version=FORMAT_VERSION, n_train=n_train, n_test_good=n_test_good,
                  n_test_per_defect=n_test_per_defect, shape=shape, seed=seed)
    return make_once(root, DEMO_CLASS, params,
                     lambda out: _write_all(out, n_train, n_test_good, n_test_per_defect, shape, seed))


def demo_image_path(root):
    """Path of one defective test image of the demo (exists once `make_demo_dataset(root)` has run)."""
    return Path(root) / DEMO_CLASS / "test" / "scratch" / "000.png"
