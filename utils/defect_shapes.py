"""Defect-shaped masks beyond DRAEM's Perlin blobs: thin cracks/scratches and small pits.

Real surface defects are often thin and elongated (cracks, scratches) or small and round (pits, blowholes);
Perlin blobs at the paper's scales are mostly large and lumpy. All random parameters are drawn from a
`torch.Generator` (batched), then OpenCV rasterises the polylines/ellipses on the CPU (microseconds per mask)
and the masks move to the requested device. Sizes are relative to the image, so one default fits every size.
"""
import math

import cv2
import numpy as np
import torch

from utils.sampling import rand


def _rand_numpy(generator, *shape):
    """U[0, 1) as a NumPy array (OpenCV draws on the CPU)."""
    return rand(generator, *shape, device="cpu").numpy()


def crack_masks(n, h, w, generator, device=None, n_points=24):
    """Thin curved lines (scratches) and jagged branching lines (cracks): (n, 1, H, W) float {0, 1}.

    A quadratic Bezier curve of length 15-60% of the image with a random bend; half of the samples get a jagged
    random-walk offset (cracks); 0-2 shorter branches; line width 0.4-1.5% of the image (at least 1 px).
    """
    m = max(h, w)
    t = np.linspace(0, 1, n_points)[:, None]  # (K, 1)
    p = _rand_numpy(generator, n, 3, 12)  # per sample, per curve: 12 uniform numbers
    noise = _rand_numpy(generator, n, 3, n_points, 2) - 0.5
    widths = _rand_numpy(generator, n)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        anchor = None
        for c in range(3):
            if c > 0 and p[i, c, 11] < 0.5:  # branch kept with probability 1/2
                continue
            start = p[i, c, 0:2] * (w, h) if anchor is None else anchor
            length = (0.15 + 0.45 * p[i, c, 2]) * m * (1.0 if c == 0 else 0.5)
            angle = p[i, c, 3] * 2 * math.pi
            end = start + length * np.array([math.cos(angle), math.sin(angle)])
            ctrl = (start + end) / 2 + (p[i, c, 4:6] - 0.5) * length
            pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t ** 2 * end  # (K, 2) x, y
            if p[i, c, 6] < 0.5:  # jagged crack
                pts = pts + np.cumsum(noise[i, c], axis=0) * 0.04 * length / math.sqrt(n_points)
            if anchor is None:
                main = pts
            anchor = main[int((0.25 + 0.5 * p[i, c, 7]) * (n_points - 1))]
            thickness = max(1, int(round((0.004 + 0.011 * widths[i]) * m)))
            cv2.polylines(masks[i], [np.round(pts).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    return torch.from_numpy(masks).float()[:, None].to(device or "cpu")


def pit_masks(n, h, w, generator, device=None, max_pits=4):
    """1-4 small ellipses per sample (pits, holes, spots), radius 1.5-7% of the image: (n, 1, H, W) {0, 1}."""
    m = max(h, w)
    p = _rand_numpy(generator, n, max_pits, 6)
    count = 1 + (_rand_numpy(generator, n) * max_pits).astype(int)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        for k in range(count[i]):
            cx, cy, ra, rb, ang, _ = p[i, k]
            axes = (max(1, int((0.015 + 0.055 * ra ** 2) * m)), max(1, int((0.015 + 0.055 * rb ** 2) * m)))
            cv2.ellipse(masks[i], (int(cx * w), int(cy * h)), axes, ang * 180, 0, 360, 1, -1)
    return torch.from_numpy(masks).float()[:, None].to(device or "cpu")


def mixed_masks(n, h, w, generator, perlin_fn, device=None, p_perlin=0.5, p_crack=0.25):
    """Per sample: a Perlin blob mask (from `perlin_fn(k, h, w)`) with p_perlin, a crack with p_crack, else pits."""
    device = device or generator.device
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    kind = (u >= p_perlin).long() + (u >= p_perlin + p_crack).long()  # 0 perlin, 1 crack, 2 pits
    masks = torch.zeros(n, 1, h, w, device=device)
    for k, fn in enumerate((perlin_fn, lambda m, hh, ww: crack_masks(m, hh, ww, generator, device),
                            lambda m, hh, ww: pit_masks(m, hh, ww, generator, device))):
        idx = (kind == k).nonzero().flatten()
        if len(idx):
            masks[idx] = fn(len(idx), h, w)
    return masks
