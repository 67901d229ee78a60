"""Thin strokes as alpha maps: gently curved hairlines (scratches) and jagged branching cracks, anti-aliased.

    lines = place(rng, crack_lines(rng, length=120, branches=2), allowed)   # [(N, 2) x, y] or None
    alpha = draw_polylines((H, W), lines, thickness=1.2)                   # (H, W) float32 in [0, 1]

A shape is drawn around the origin, then `place`d where every point of it lies on `allowed` pixels (inside the
image, on the painted plate): a long stroke in a narrow image is never clipped against the border.
Used by the demo's defects (demo_data.py) and the proxies' simulated cracks (proxies.py).
"""
import cv2
import numpy as np

SUPERSAMPLE = 4  # strokes are drawn 4x larger and area-averaged down: smooth sub-pixel alpha


def draw_polylines(shape, polylines, thickness):
    """Alpha (H, W) of anti-aliased polylines [(N, 2) x, y in pixels], `thickness` in pixels (may be < 1): a pixel's
    alpha is the share of it the stroke covers, whatever the stroke's direction.

    Only the lines' bounding box is supersampled, so a hairline on a large image costs what the hairline costs.
    """
    h, w = shape
    pts = np.concatenate(polylines)
    pad = int(np.ceil(thickness)) + 2
    x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(pts.max(axis=0)).astype(int) + pad + 1, (w, h))
    alpha = np.zeros((h, w), np.float32)
    if x1 <= x0 or y1 <= y0:
        return alpha
    s = SUPERSAMPLE
    centre = np.full(((y1 - y0) * s, (x1 - x0) * s), 255, np.uint8)  # (s*h', s*w'), 0 on the centre line
    # pixel i spans [i - 0.5, i + 0.5): its centre maps to the middle of big pixels s*i .. s*i + s - 1
    local = [np.round((p - (x0, y0) + 0.5) * s - 0.5).astype(np.int32) for p in polylines]
    cv2.polylines(centre, local, isClosed=False, color=0, thickness=1, lineType=cv2.LINE_8)
    dist = cv2.distanceTransform(centre, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # big px to the centre line
    cover = np.clip(thickness * s / 2 + 0.5 - dist, 0, 1)  # a band `thickness` wide, its rim anti-aliased
    alpha[y0:y1, x0:x1] = cv2.resize(cover, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return alpha


def curve(rng, length, bend=0.12, n=64):
    """(n, 2) points of a gently curved stroke (quadratic Bezier) of chord `length`, any direction, centred on 0.

    bend: the largest sideways bulge of the control point, as a fraction of the length."""
    theta = rng.uniform(0, np.pi)
    d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
    p1 = np.array([-d[1], d[0]]) * 2 * rng.uniform(-bend, bend)  # control point, sideways from the chord's centre
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * -d + 2 * (1 - t) * t * p1 + t ** 2 * d


def walk(rng, start, heading, n_steps, step, jag=0.4, drift=0.08):
    """(n_steps + 1, 2) points of a jagged line: each step turns by ~`jag` rad (23 deg) about a course that drifts
    slowly (~`drift` rad per step), so the line zigzags but keeps its way, as a crack does, instead of curling up."""
    headings = heading + np.cumsum(rng.normal(0, drift, n_steps)) + rng.normal(0, jag, n_steps)
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def crack_lines(rng, length, branches, step=4.0):
    """[(N, 2)] a jagged main line of about `length` px from the origin plus `branches` side branches (each about
    a third to a half as long) leaving it at random points."""
    n_steps = max(2, int(round(length / step)))
    heading = rng.uniform(0, 2 * np.pi)
    main = walk(rng, np.zeros(2), heading, n_steps, step)
    lines = [main]
    for _ in range(branches):
        at = main[rng.integers(1, len(main))]
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)  # branches fork off at 30-60 deg
        n_branch = max(2, int(round(n_steps * rng.uniform(0.3, 0.5))))
        lines.append(walk(rng, at, heading + turn, n_branch, step * 0.8))
    return lines


def _dense(polylines, spacing=1.0):
    """(M, 2) points every ~`spacing` px along the polylines (vertices and the segments between them)."""
    out = []
    for p in polylines:
        seg = np.diff(p, axis=0)
        n = np.maximum(1, np.ceil(np.hypot(*seg.T) / spacing).astype(int))
        for a, d, k in zip(p[:-1], seg, n):
            out.append(a + d * (np.arange(k)[:, None] / k))
        out.append(p[-1:])
    return np.concatenate(out)


def place(rng, polylines, allowed, tries=200):
    """The polylines moved so that every point along them lies on an `allowed` (H, W) bool pixel, the shift drawn
    at random among the pixels tried (the first point lands on a random allowed pixel); None when `tries` draws
    all fail (the shape does not fit there)."""
    ys, xs = np.nonzero(allowed)
    if not len(xs):
        return None
    h, w = allowed.shape
    dense = _dense(polylines) - polylines[0][0]  # relative to the first point
    for k in rng.integers(0, len(xs), size=tries):
        q = np.round(dense + (xs[k], ys[k])).astype(int)
        inside = (q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)
        if inside.all() and allowed[q[:, 1], q[:, 0]].all():
            shift = np.array([xs[k], ys[k]], float) - polylines[0][0]
            return [p + shift for p in polylines]
    return None


def interior(shape, margin):
    """(H, W) bool: True at least `margin` px from the border, where a stroke's centre line may go."""
    allowed = np.zeros(shape, bool)
    allowed[margin:shape[0] - margin, margin:shape[1] - margin] = True
    return allowed
