"""Simulated defects of another family than training's: thin lines and smoothed-away spots on held-out good images.

Training pastes Perlin-masked textures (simulation.py), which DRAEM learns to find; a check made of those flatters
DRAEM. These are subtle instead, drawn on good images the pair never trained on: a thin dark or bright line (a
scratch, a crack: 1-3 px, a random walk), and a soft spot where the surface is smoothed and its brightness shifted
(a stain, a polished or worn patch, texture smoothed away). The pair chooses the shape of its output map on them
(utils/training/fine_choice.py); nothing here looks at a test split.

    image, mask = thin_line(rng, image)      # (H, W, 3) float32 in [0, 1] -> a copy with a line, (H, W) bool
"""
import cv2
import numpy as np

LINE_LENGTH = (0.15, 0.5)  # of the image's longer side
LINE_WIDTH = (1, 3)  # px
LINE_GAIN = (0.3, 0.6)  # relative darkening (or brightening) on the line
SPOT_RADIUS = (0.04, 0.12)  # of the image's shorter side
SPOT_BLUR = (2.0, 4.0)  # Gaussian sigma of the smoothing, px
SPOT_GAIN = (0.85, 1.15)  # brightness factor inside the spot


def _walk(rng, h, w):
    """(N, 2) int32 x, y of a jagged line of about LINE_LENGTH of the longer side, starting anywhere in the image."""
    length = rng.uniform(*LINE_LENGTH) * max(h, w)
    steps = int(rng.integers(3, 9))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, steps))  # turns of ~20 degrees
    moves = np.stack([np.cos(heading), np.sin(heading)], 1) * length / steps  # (steps, 2)
    pts = np.vstack([[0.0, 0.0], np.cumsum(moves, 0)])
    lo, hi = pts.min(0), pts.max(0)
    start = rng.uniform(-lo, np.maximum((w - 1, h - 1) - hi, -lo))  # inside the image where it fits, else clipped
    return np.round(pts + start).astype(np.int32)


def thin_line(rng, image):
    """A copy of image (H, W, 3) float32 in [0, 1] with a thin line, and the bool mask (H, W) of its pixels."""
    h, w = image.shape[:2]
    canvas = np.zeros((h, w), np.uint8)
    cv2.polylines(canvas, [_walk(rng, h, w)], False, 255, int(rng.integers(LINE_WIDTH[0], LINE_WIDTH[1] + 1)),
                  cv2.LINE_AA)
    alpha = canvas.astype(np.float32)[..., None] / 255  # (H, W, 1)
    gain = rng.uniform(*LINE_GAIN) * (1 if rng.random() < 0.7 else -1)  # mostly dark, as most cracks
    out = np.clip(image * (1 - gain * alpha), 0, 1)
    return out, alpha[..., 0] > 0.25


def smoothed_spot(rng, image):
    """A copy of image (H, W, 3) with a soft elliptic spot smoothed and brightened or darkened, and its bool mask
    (H, W): where the spot's weight is over one half."""
    h, w = image.shape[:2]
    r = max(2.0, rng.uniform(*SPOT_RADIUS) * min(h, w))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    angle, ratio = rng.uniform(0, np.pi), rng.uniform(0.5, 1.0)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / r
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / (r * ratio)
    weight = np.sqrt(np.clip(1.5 - 1.5 * np.sqrt(u * u + v * v), 0, 1))[..., None]  # (H, W, 1), soft rim
    smooth = cv2.GaussianBlur(image, (0, 0), rng.uniform(*SPOT_BLUR)) * rng.uniform(*SPOT_GAIN)
    out = np.clip(image * (1 - weight) + smooth * weight, 0, 1).astype(np.float32)
    return out, weight[..., 0] > 0.5


DEFECTS = (thin_line, smoothed_spot)
