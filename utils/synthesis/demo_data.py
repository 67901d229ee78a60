"""A small procedural inspection dataset ("coil": brushed/rolled metal) in MVTec AD layout, made on the fly.

The quick start trains on it without any download:

    root/coil/train/good/000.png ...
    root/coil/test/good/000.png ...
    root/coil/test/<defect>/000.png ...
    root/coil/ground_truth/<defect>/000_mask.png ...      (0/255, exactly the altered pixels)

The test defects (scratch, dent, crack, stain) are shapes that DRAEM's training simulation (Perlin blobs of
pasted texture) never produces, so a good score means the model learnt "normal", not the simulator.
Every image has its own generator seeded from (seed, split, defect, index), so an image does not change when
the counts of other images do. Generation is vectorised numpy/cv2: the default set takes about a second.
"""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEMO_ROOT = Path("data") / "demo"  # where train.py and detect.py put and find the demo, relative to the cwd
DEMO_CLASS = "coil"
DEFECT_TYPES = ("scratch", "dent", "crack", "stain")
MARKER = ".complete"  # written last: its presence (with matching parameters) means the folder is complete
FORMAT_VERSION = 1  # bump when the generator changes, so cached copies are regenerated

_SUPERSAMPLE = 4  # thin lines are drawn 4x larger and area-averaged down: smooth sub-pixel alpha
_ALPHA_MIN = 0.15  # alpha below this is dropped, so the mask (alpha > 0) covers exactly the altered pixels


# ---------------------------------------------------------------------------------------------- normal surface
def _streaks(rng, n, length):
    """(n, n) zero-mean unit-std horizontal streak field: fine brushing lines plus per-row roll marks."""
    fine = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (length, 1))  # average along x only
    rows = cv2.GaussianBlur(rng.standard_normal((n, 1)).astype(np.float32), (1, 0), 0.8)  # (n, 1) per row
    field = fine / fine.std() + 0.6 * np.broadcast_to(rows / rows.std(), (n, n))
    return field / field.std()


def _lighting(rng, size):
    """(size, size) low-frequency illumination: tilt, vignette and a few soft blotches, roughly in [-0.1, 0.1]."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    gx, gy = rng.uniform(-0.05, 0.05, size=2)
    vignette = rng.uniform(0.0, 0.08) * (x ** 2 + y ** 2) / 2
    blotch = cv2.resize(rng.standard_normal((4, 4)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    return gx * x + gy * y - vignette + 0.015 * blotch


def brushed_metal(rng, size):
    """One normal "coil" image: float32 (size, size, 3) RGB in [0, 1]."""
    n = int(np.ceil(size * 1.2)) + 2  # margin so a small rotation still covers the crop
    field = _streaks(rng, n, length=max(3, size // 3))
    angle = rng.uniform(-4.0, 4.0)  # rolling direction is never perfectly aligned with the camera
    rot = cv2.getRotationMatrix2D((n / 2, n / 2), angle, 1.0)
    field = cv2.warpAffine(field, rot, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    o = (n - size) // 2
    field = field[o:o + size, o:o + size]  # (size, size)

    base = rng.uniform(0.42, 0.6)  # exposure differs between shots
    contrast = rng.uniform(0.025, 0.04)  # streak strength: well below the defects' 0.15-0.35
    grey = base + _lighting(rng, size) + contrast * field
    tint = np.array([0.97, 0.99, 1.03], np.float32) + rng.uniform(-0.01, 0.01, size=3)  # cold steel tint
    img = grey[..., None] * tint  # (size, size, 3)
    img += rng.normal(0.0, 0.006, size=img.shape)  # sensor noise
    return img.astype(np.float32)


# ---------------------------------------------------------------------------------------------- defects
# Each returns (alpha (H, W) in [0, 1], delta (H, W, 3)): the image becomes img + alpha * delta.
def _scale(size):
    return size / 128.0  # defect sizes in the brief are given for 128 px images


def _draw_lines(size, polylines, thickness):
    """Alpha (size, size) of anti-aliased polylines given in pixel coords, thickness in pixels (may be < 1)."""
    big = np.zeros((size * _SUPERSAMPLE, size * _SUPERSAMPLE), np.float32)
    pts = [np.round((p + 0.5) * _SUPERSAMPLE).astype(np.int32) for p in polylines]
    cv2.polylines(big, pts, isClosed=False, color=1.0,
                  thickness=max(1, int(round(thickness * _SUPERSAMPLE))), lineType=cv2.LINE_8)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def _grey(value, size):
    return np.full((size, size, 3), value, np.float32)


def scratch(rng, size):
    """Thin bright or dark curve (quadratic Bezier), 1-3 px wide, 30-70 px long (at 128 px)."""
    s = _scale(size)
    length = rng.uniform(30, 70) * s
    theta = rng.uniform(0, np.pi)
    centre = rng.uniform(0.2 * size + length / 2 * 0.5, 0.8 * size - length / 2 * 0.5, size=2)
    d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
    p0, p2 = centre - d, centre + d
    p1 = centre + np.array([-d[1], d[0]]) * rng.uniform(-0.5, 0.5)  # bend sideways
    t = np.linspace(0, 1, 40)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (40, 2) x, y
    alpha = _draw_lines(size, [np.clip(curve, 1, size - 2)], thickness=rng.uniform(1.0, 2.5) * max(s, 0.5))
    sign = rng.choice([-1.0, 1.0])
    return alpha, _grey(sign * rng.uniform(0.2, 0.3), size)


def dent(rng, size):
    """Small round depression or bump lit from one side: a bright and a dark half-moon, radius 3-10 px."""
    s = _scale(size)
    r = max(2.0, rng.uniform(3, 10) * s)
    cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
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


def _walk(rng, start, heading, n_steps, step):
    """(n_steps + 1, 2) points of a jagged random walk: the heading drifts by ~20 deg per step."""
    headings = heading + np.cumsum(rng.normal(0, 0.35, n_steps))
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def crack(rng, size):
    """Thin dark jagged polyline with 1-3 side branches."""
    s = _scale(size)
    step = 4.0 * s
    n_steps = int(rng.uniform(30, 55) * s / step) + 2
    start = rng.uniform(0.3 * size, 0.7 * size, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    main = _walk(rng, start, heading, n_steps, step)
    lines = [main]
    for _ in range(rng.integers(1, 4)):
        at = main[rng.integers(1, len(main))]
        turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        lines.append(_walk(rng, at, heading + turn, max(3, n_steps // 2), step * 0.8))
    lines = [np.clip(p, 1, size - 2) for p in lines]
    alpha = _draw_lines(size, lines, thickness=rng.uniform(1.0, 1.8) * max(s, 0.5))
    return alpha, _grey(-rng.uniform(0.25, 0.35), size)


def stain(rng, size):
    """Soft-edged irregular discoloured patch (rust/oil brown, darker), 8-18 px radius."""
    s = _scale(size)
    radius = max(3.0, rng.uniform(8, 18) * s)
    c = rng.uniform(radius + 2, size - radius - 2, size=2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(4, 8)):  # a few overlapping elongated gaussians make an irregular outline
        dx, dy = x - (c[0] + rng.uniform(-0.6, 0.6) * radius), y - (c[1] + rng.uniform(-0.6, 0.6) * radius)
        a = rng.uniform(0, np.pi)
        along, across = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
        sx, sy = rng.uniform(0.25, 0.6, size=2) * radius
        field += np.exp(-(along ** 2 / (2 * sx ** 2) + across ** 2 / (2 * sy ** 2)))
    grain = max(3, int(size / (0.6 * radius)))  # noise cells of ~ radius/2: ragged outline, mottled inside
    noise = cv2.resize(rng.standard_normal((grain, grain)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    t = np.clip((field + 0.15 * noise - 0.4) / 0.5, 0, 1)
    alpha = t * t * (3 - 2 * t) * np.clip(0.85 + 0.15 * noise, 0.6, 1.0)  # smoothstep: soft edge
    colour = np.array([0.0, -0.06, -0.13], np.float32) - rng.uniform(0.1, 0.16)  # brownish and darker
    return alpha, np.broadcast_to(colour, (size, size, 3)).astype(np.float32)


DEFECTS = {"scratch": scratch, "dent": dent, "crack": crack, "stain": stain}


def add_defect(rng, img, kind):
    """Apply one defect of `kind` to a (H, W, 3) float image; returns (image, bool mask (H, W))."""
    alpha, delta = DEFECTS[kind](rng, img.shape[0])
    alpha = np.where(alpha >= _ALPHA_MIN, alpha, 0.0).astype(np.float32)  # unaltered <=> outside the mask
    return img + alpha[..., None] * delta, alpha > 0


# ---------------------------------------------------------------------------------------------- writing
def _to_png(path, img):
    rgb = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def _image_rng(seed, split, kind, i):
    # Split/kind as small integers: each image's stream depends only on (seed, where it is, index).
    kinds = ("good",) + DEFECT_TYPES
    return np.random.default_rng([seed, ("train", "test").index(split), kinds.index(kind), i])


def _write_all(out, n_train, n_test_good, n_test_per_defect, size, seed):
    for split, kind, count in [("train", "good", n_train), ("test", "good", n_test_good)]:
        folder = out / split / kind
        folder.mkdir(parents=True)
        for i in range(count):
            _to_png(folder / f"{i:03d}.png", brushed_metal(_image_rng(seed, split, kind, i), size))
    for kind in DEFECT_TYPES:
        img_dir, gt_dir = out / "test" / kind, out / "ground_truth" / kind
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n_test_per_defect):
            rng = _image_rng(seed, "test", kind, i)
            img, mask = add_defect(rng, brushed_metal(rng, size), kind)
            _to_png(img_dir / f"{i:03d}.png", img)
            cv2.imwrite(str(gt_dir / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)


def _is_complete(class_dir, params):
    marker = class_dir / MARKER
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def make_demo_dataset(root, n_train=120, n_test_good=20, n_test_per_defect=10, size=128, seed=0):
    """Generate (once) the demo class in MVTec layout under `root` and return `root/coil`.

    A complete copy made with the same parameters is reused; an interrupted or differently parameterised one is
    replaced. Files are written to a temporary sibling folder that is renamed into place, marker last.
    """
    root = Path(root)
    class_dir = root / DEMO_CLASS
    params = dict(version=FORMAT_VERSION, n_train=n_train, n_test_good=n_test_good,
                  n_test_per_defect=n_test_per_defect, size=size, seed=seed)
    if _is_complete(class_dir, params):
        return class_dir
    log.info("generating demo dataset %r at %s", DEMO_CLASS, class_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_CLASS}-tmp-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        _write_all(tmp, n_train, n_test_good, n_test_per_defect, size, seed)
        (tmp / MARKER).write_text(json.dumps(params))
        if class_dir.exists():  # stale or incomplete: move aside first, a directory cannot be renamed over it
            old = Path(tempfile.mkdtemp(prefix=f".{DEMO_CLASS}-old-", dir=root))
            os.replace(class_dir, old / DEMO_CLASS)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, class_dir)
    except OSError:
        if _is_complete(class_dir, params):  # another process finished the same dataset first
            return class_dir
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return class_dir


def demo_image_path(root):
    """Path of one defective test image of the demo (exists once `make_demo_dataset(root)` has run)."""
    return Path(root) / DEMO_CLASS / "test" / "scratch" / "000.png"
