"""Evaluation metrics for anomaly detection in the MVTec AD style.

Pure functions on numpy arrays (CPU torch tensors also work through ``np.asarray``):

* image level: AUROC and average precision of one score per image against 0/1 labels;
* pixel level: AUROC and average precision over all pixels of all images, flattened (the values of
  scikit-learn's functions, computed faster);
* AUPRO: the area under the per-region-overlap curve of Bergmann et al. (IJCV 2021), up to a false
  positive rate limit, normalised so that a perfect detector scores 1.0;
* reconstruction: R² of each good image's reconstruction (training logs it on the held-out good images).

Undefined cases (only one class present, e.g. no anomalous pixel at all) give ``float("nan")`` instead of
raising, so an evaluation over a subset of the test set never crashes.

Masks: a pixel is anomalous where ``mask > 0.5``, which reads bool, {0, 1} and {0, 255} masks alike.
Maps: higher means more anomalous. Stacks are (N, H, W); (N, 1, H, W) and a single (H, W) map are accepted, and
so is a list of (H_i, W_i) maps of different sizes (images evaluated at their own scale, utils/tiling.py).
"""

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

logger = logging.getLogger(__name__)

METRIC_NAMES = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")


# --------------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------------
def _as_stack(x):
    """Return `x` as an (N, H, W) array; accepts (H, W) and (N, 1, H, W), and returns a list of (H_i, W_i)
    arrays for a list of maps of different sizes."""
    if isinstance(x, (list, tuple)) and len({np.shape(m) for m in x}) > 1:
        return [np.asarray(m).reshape(np.shape(m)[-2:]) for m in x]
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected maps/masks of shape (N, H, W), got {x.shape}")
    return x


def _masks_and_maps(masks, maps):
    """Binary (N, H, W) masks and float (N, H, W) maps of the same shape (or lists of (H_i, W_i) ones)."""
    masks, maps = _as_stack(masks), _as_stack(maps)
    if isinstance(masks, list) or isinstance(maps, list):
        if [np.shape(m) for m in masks] != [np.shape(m) for m in maps]:
            raise ValueError("masks and maps differ in shape")
        return [m > 0.5 for m in masks], [_floating(m) for m in maps]
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    return masks > 0.5, _floating(maps)


def _floating(maps: np.ndarray) -> np.ndarray:
    return maps if np.issubdtype(maps.dtype, np.floating) else maps.astype(np.float64)


def _split_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Scores of all normal and of all anomalous pixels, flattened over the images: (P_normal,), (P_anomalous,)."""
    if isinstance(maps, np.ndarray):
        return maps[~masks], maps[masks]
    return (np.concatenate([p[~m] for m, p in zip(masks, maps)]),
            np.concatenate([p[m] for m, p in zip(masks, maps)]))


def _select(stack, keep: np.ndarray):
    """The images of `stack` (array or list) where `keep` (N,) is True."""
    return stack[keep] if isinstance(stack, np.ndarray) else [m for m, k in zip(stack, keep) if k]


def _pixels_of_both_classes(masks) -> bool:
    if isinstance(masks, np.ndarray):
        return _both_classes(masks)
    n_pos, n = sum(int(np.count_nonzero(m)) for m in masks), sum(m.size for m in masks)
    return 0 < n_pos < n


def _both_classes(labels: np.ndarray) -> bool:
    """AUROC and AP are only defined when positives and negatives are both present."""
    n_pos = int(np.count_nonzero(labels))
    return 0 < n_pos < labels.size


# --------------------------------------------------------------------------------------------------------
# Image and pixel level: AUROC and AP
# --------------------------------------------------------------------------------------------------------
def _binary_metric(fn, labels, scores) -> float:
    labels = np.asarray(labels).ravel() > 0.5  # (B,)
    scores = np.asarray(scores).ravel()  # (B,)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    if not _both_classes(labels):
        logger.debug("%s undefined: only one class present", fn.__name__)
        return float("nan")
    return float(fn(labels, scores))


def image_auroc(labels, scores) -> float:
    """ROC AUC of image scores (B,) against 0/1 labels (B,); nan if only one class is present."""
    return _binary_metric(roc_auc_score, labels, scores)


def image_ap(labels, scores) -> float:
    """Average precision of image scores (B,) against 0/1 labels (B,); nan if only one class is present."""
    return _binary_metric(average_precision_score, labels, scores)


# scikit-learn would argsort all N*H*W pixels (~15 s and >1 GB per metric for 500 maps of 256x256); the
# pixel metrics below give the same numbers from the sorted normal and sorted anomalous scores, where
# np.sort is fast and the anomalous pixels are few.
def _scores_by_class(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the normal and of the anomalous pixels, each sorted ascending: (P_normal,), (P_anomalous,)."""
    normal, anomalous = _split_pixels(masks, maps)
    return np.sort(normal), np.sort(anomalous)


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels of masks (N, H, W) and maps (N, H, W), flattened; nan if one class only.

    Computed as P(anomalous > normal) + P(anomalous == normal) / 2 (the Mann-Whitney statistic), which
    equals the trapezoid area under the ROC curve that `roc_auc_score` gives.
    """
    masks, maps = _masks_and_maps(masks, maps)
    if not _pixels_of_both_classes(masks):
        logger.debug("pixel metric undefined: masks hold only one class")
        return float("nan")
    normal, anomalous = _scores_by_class(masks, maps)
    below = np.searchsorted(normal, anomalous, side="left")  # (P_anomalous,) normal scores < each one
    not_above = np.searchsorted(normal, anomalous, side="right")  # normal scores <= each one
    return float(np.sum(below + not_above) / (2.0 * anomalous.size * normal.size))


def pixel_ap(masks, maps) -> float:
    """Average precision over all pixels of masks (N, H, W) and maps (N, H, W), flattened.

    As in `average_precision_score`: the sum over thresholds t of (recall step) * precision for the
    prediction {map >= t}. Recall only steps at anomalous scores, so those are the only thresholds needed.
    """
    masks, maps = _masks_and_maps(masks, maps)
    if not _pixels_of_both_classes(masks):
        logger.debug("pixel metric undefined: masks hold only one class")
        return float("nan")
    normal, anomalous = _scores_by_class(masks, maps)
    levels = np.unique(anomalous)  # (L,) ascending
    tp = anomalous.size - np.searchsorted(anomalous, levels, side="left")  # (L,) anomalous >= t
    fp = normal.size - np.searchsorted(normal, levels, side="left")  # (L,) normal >= t
    recall_step = (tp - np.append(tp[1:], 0)) / anomalous.size  # (L,) pixels scoring exactly t
    return float(np.sum(recall_step * tp / (tp + fp)))


# --------------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------------
def _region_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and weights of all anomalous pixels, and the number of ground-truth regions.

    A pixel of region r gets weight 1 / |r|, so summing the weights of the pixels above a threshold gives
    the sum over regions of their detected fraction; dividing by the region count then gives PRO.
    """
    scores, weights, n_regions = [], [], 0
    for mask, amap in zip(masks, maps):
        if not mask.any():
            continue  # a good image has no region, but its pixels still count as normal for the FPR
        n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)  # (H, W) int32
        sizes = np.bincount(labels.ravel(), minlength=n_labels)  # (n_labels,), label 0 = background
        scores.append(amap[mask])  # (P_i,)
        weights.append(1.0 / sizes[labels[mask]])  # (P_i,)
        n_regions += n_labels - 1
    if not scores:
        return np.empty(0), np.empty(0), 0
    return np.concatenate(scores), np.concatenate(weights), n_regions


def _count_above(sorted_values: np.ndarray, thresholds: np.ndarray, inclusive: bool) -> np.ndarray:
    """How many of `sorted_values` are > t (or >= t when `inclusive`) for each threshold t."""
    side = "left" if inclusive else "right"
    return len(sorted_values) - np.searchsorted(sorted_values, thresholds, side=side)


def pro_curve(masks, maps, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: (fpr, pro), both (K,), ordered by decreasing threshold.

    For a threshold t the prediction is {map > t}:
      PRO(t) = mean over ground-truth regions r of |r ∩ {map > t}| / |r|, where the regions are the
               8-connected components of each image's mask;
      FPR(t) = |{mask == 0} ∩ {map > t}| / |{mask == 0}|, over the normal pixels of all images (good
               images included).
    The curve starts at (0, 0) (t above every score) and ends at (1, 1) (t below every score); both
    coordinates are non-decreasing along it.

    `num_thresholds=None` gives the exact curve, the one the MVTec AD reference code (`compute_pro`) builds
    by sorting all pixels with every distinct score as a threshold. Only the points at anomalous scores
    are computed: between two of them only normal pixels cross the threshold, so PRO is constant and the
    skipped points lie on a horizontal segment, which changes neither the trapezoid area nor its
    interpolation. At each distinct anomalous score a, the points {map > a} and {map >= a} are both kept,
    so a tie between normal and anomalous pixels gives the same diagonal step as in the reference.
    An integer gives that many thresholds evenly spaced from the lowest to the highest score: an
    approximation, coarse where the normal scores are packed into a narrow range.
    """
    masks, maps = _masks_and_maps(masks, maps)
    normal = np.sort(_split_pixels(masks, maps)[0])  # (P_normal,)
    scores, weights, n_regions = _region_pixels(masks, maps)
    if n_regions == 0 or normal.size == 0:
        raise ValueError("the PRO curve needs both anomalous and normal pixels")
    order = np.argsort(scores)
    scores = scores[order]  # (P_anomalous,) ascending
    cum_weights = np.concatenate([[0.0], np.cumsum(weights[order])])  # (P_anomalous + 1,)

    def point(thresholds, inclusive):
        # fpr, pro: (T,) for the prediction {map > t} (or {map >= t})
        fpr = _count_above(normal, thresholds, inclusive) / normal.size
        n_above = _count_above(scores, thresholds, inclusive)
        pro = (cum_weights[-1] - cum_weights[scores.size - n_above]) / n_regions
        return fpr, pro

    if num_thresholds is None:
        levels = np.unique(scores)[::-1]  # (L,) descending distinct anomalous scores
        (fpr_gt, pro_gt), (fpr_ge, pro_ge) = point(levels, False), point(levels, True)
        fpr = np.stack([fpr_gt, fpr_ge], axis=1).ravel()  # (2L,) {> a1}, {>= a1}, {> a2}, ...
        pro = np.stack([pro_gt, pro_ge], axis=1).ravel()
    else:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
        lo, hi = min(normal[0], scores[0]), max(normal[-1], scores[-1])
        fpr, pro = point(np.linspace(hi, lo, num_thresholds), False)
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    pro = np.clip(np.concatenate([[0.0], pro, [1.0]]), 0.0, 1.0)  # cumsum rounding can overshoot 1
    return fpr, pro


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the polyline (x, y), x non-decreasing, from x[0] to `x_max`.

    The curve is cut at exactly `x_max`, with y interpolated linearly on the segment that crosses it.
    """
    end = int(np.searchsorted(x, x_max, side="right"))  # points 0..end-1 have x <= x_max
    xs, ys = x[:end], y[:end]
    if end < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (Bergmann et al., IJCV 2021).

    The exact rule: take the curve of `pro_curve` (points (FPR(t), PRO(t)) for the prediction {map > t},
    from (0, 0) to (1, 1)), integrate PRO over FPR with the trapezoid rule from FPR = 0 to FPR =
    `fpr_limit`, cutting the curve at exactly `fpr_limit` with PRO interpolated linearly on the segment
    that crosses it, and divide the area by `fpr_limit`. A perfect detector (every anomalous pixel above
    every normal one) reaches PRO = 1 at FPR = 0 and scores 1.0; a constant map scores `fpr_limit / 2`.

    masks (N, H, W) 0/1 and maps (N, H, W) float, over all test images including the good ones.
    `num_thresholds=None` is exact (see `pro_curve`). Returns nan without anomalous or without normal pixels.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = _masks_and_maps(masks, maps)
    if not _pixels_of_both_classes(masks):
        logger.debug("aupro undefined: masks hold only one class")
        return float("nan")
    fpr, pro = pro_curve(masks, maps, num_thresholds)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def reconstruction_r2(reconstructions, images) -> np.ndarray:
    """Per image, the share of its variance that its reconstruction explains: 1 - MSE(rec, image) / Var(image),
    over all its pixels and channels. Stacks (N, C, H, W) -> (N,): 1 is exact, 0 no better than the image's flat
    mean, below 0 worse than it; nan for a flat image (no variance to explain)."""
    rec = np.asarray(reconstructions, dtype=np.float64).reshape(len(reconstructions), -1)
    img = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    var = img.var(axis=1)
    mse = ((rec - img) ** 2).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 1e-12, 1.0 - mse / var, np.nan)


def removal_contrast(reconstructions, images, masks) -> np.ndarray:
    """Per defective image, how much more its reconstruction departs from it inside the defect than outside:
    mean |rec - image| over the mask's pixels / the same outside it (channels averaged). Stacks (N, C, H, W),
    masks (N, H, W) -> (N,): above 1 the network removes the defect more than it changes the good surface; nan
    where the mask is empty or full."""
    rec = np.asarray(reconstructions, dtype=np.float64)
    img = np.asarray(images, dtype=np.float64)
    m = np.asarray(masks).reshape(len(rec), *rec.shape[-2:]) > 0.5
    d = np.abs(rec - img).mean(axis=1)  # (N, H, W)
    out = np.full(len(rec), np.nan)
    for i in range(len(rec)):
        if m[i].any() and not m[i].all():
            out[i] = d[i][m[i]].mean() / max(d[i][~m[i]].mean(), 1e-12)
    return out


# --------------------------------------------------------------------------------------------------------
# All metrics, per defect type, as a table
# --------------------------------------------------------------------------------------------------------
def compute_all(labels, scores, masks, maps, fpr_limit: float = 0.3) -> dict[str, float]:
    """All five metrics: labels (B,), scores (B,), masks (B, H, W), maps (B, H, W); nan where undefined."""
    masks, maps = _masks_and_maps(masks, maps)
    return {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": image_ap(labels, scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "pixel_ap": pixel_ap(masks, maps),
        "aupro": aupro(masks, maps, fpr_limit=fpr_limit),
    }


def per_type_metrics(
    types: Sequence[str], labels, scores, masks, maps, fpr_limit: float = 0.3
) -> dict[str, dict[str, float]]:
    """Metrics per defect type, each computed on that type's images plus all "good" images.

    That is how MVTec-style per-defect tables are built. Keys: the defect types in sorted order, then
    "overall" (all images).
    """
    types = np.asarray(types)
    labels, scores = np.asarray(labels), np.asarray(scores)
    masks, maps = _masks_and_maps(masks, maps)
    if not len(types) == len(labels) == len(scores) == len(masks):
        raise ValueError("types, labels, scores, masks and maps must hold the same number of images")
    good = types == "good"
    results = {}
    for defect in sorted(set(types.tolist()) - {"good"}):
        keep = good | (types == defect)  # (B,)
        results[defect] = compute_all(labels[keep], scores[keep], _select(masks, keep), _select(maps, keep),
                                      fpr_limit)
    results["overall"] = compute_all(labels, scores, masks, maps, fpr_limit)
    return results


PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro")


def drop_pixel_metrics(results, types_without_masks):
    """Pixel metrics set to None ("not available") for the types whose masks are missing, and overall.

    Without its ground-truth mask an anomalous image has no known defect pixels: any pixel metric computed
    from it would be made up.
    """
    if not types_without_masks:
        return results
    for name in [*types_without_masks, "overall"]:
        if name in results:
            results[name].update({k: None for k in PIXEL_METRICS})
    for half in results.get("overall", {}).get("halves", {}).values():  # the three rows of a pair with a prior
        half.update({k: None for k in PIXEL_METRICS})
    return results


def format_table(results: dict[str, dict[str, float]], row_label: str = "type") -> str:
    """Aligned text table: one row per type ("overall" last), one column per metric, 3 decimals, nan as "-"."""
    rows = [name for name in results if name != "overall"] + (["overall"] if "overall" in results else [])
    first = max([len(row_label)] + [len(name) for name in rows])
    widths = [max(len(col), 5) for col in METRIC_NAMES]

    def cell(value) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.3f}"

    lines = ["  ".join([row_label.ljust(first)] + [c.rjust(w) for c, w in zip(METRIC_NAMES, widths)])]
    for name in rows:
        values = [cell(results[name].get(col)) for col in METRIC_NAMES]
        lines.append("  ".join([name.ljust(first)] + [v.rjust(w) for v, w in zip(values, widths)]))
    return "\n".join(lines)
