"""Tests for utils/evaluation/metrics.py: tiny, seeded numpy cases, no data or torch needed."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from utils.evaluation.metrics import (METRIC_NAMES, aupro, compute_all, format_table, image_ap, image_auroc,
                                      per_type_metrics, pixel_ap, pixel_auroc, pro_curve, reconstruction_r2,
                                      removal_contrast)


def random_case(seed=0, n=6, size=16):
    """Random masks with a few rectangular defects, noisy maps that favour them, labels and image scores."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2, n):  # first half good, second half defective
        for _ in range(2):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = (rng.random(masks.shape) + 0.8 * masks).astype(np.float32)
    labels = masks.reshape(n, -1).max(axis=1)
    scores = maps.reshape(n, -1).max(axis=1) + rng.normal(0, 0.3, n)
    return labels, scores, masks, maps


def reference_aupro(masks, maps, fpr_limit):
    """Straightforward AUPRO following the MVTec AD authors' generic_util.py (compute_pro + trapezoid).

    Sort every pixel by score, descending; a normal pixel adds 1/#normal to the FPR, a pixel of region r
    adds 1/(|r| * #regions) to the PRO; keep the last point of each run of equal scores; add (0, 0) and
    (1, 1); integrate up to fpr_limit, interpolating there; divide by fpr_limit.
    """
    import cv2

    fp_changes, pro_changes, n_regions = np.zeros(maps.shape), np.zeros(maps.shape), 0
    for i, mask in enumerate(masks):
        n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        n_regions += n_labels - 1
        fp_changes[i][labels == 0] = 1
        for k in range(1, n_labels):
            pro_changes[i][labels == k] = 1.0 / np.sum(labels == k)
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    sorted_scores = maps.ravel()[order]
    fprs = np.cumsum(fp_changes.ravel()[order]) / fp_changes.sum()
    pros = np.cumsum(pro_changes.ravel()[order]) / n_regions
    keep = np.append(np.diff(sorted_scores) != 0, True)
    fprs = np.concatenate([[0], fprs[keep], [1]])
    pros = np.concatenate([[0], np.clip(pros[keep], 0, 1), [1]])
    # trapezoid up to fpr_limit with linear interpolation at fpr_limit
    ins = np.searchsorted(fprs, fpr_limit)  # first index with fprs >= fpr_limit
    area = np.trapezoid(pros[:ins], fprs[:ins]) if hasattr(np, "trapezoid") else np.trapz(pros[:ins], fprs[:ins])
    y_lim = np.interp(fpr_limit, fprs[ins - 1 : ins + 1], pros[ins - 1 : ins + 1])
    area += (fpr_limit - fprs[ins - 1]) * (pros[ins - 1] + y_lim) / 2
    return area / fpr_limit


# --------------------------------------------------------------------------------------------------------
# AUROC / AP against scikit-learn
# --------------------------------------------------------------------------------------------------------
def test_image_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    scores = rng.normal(size=40) + labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores))


@pytest.mark.parametrize("levels", [None, 6])
def test_pixel_metrics_match_sklearn_on_flattened_pixels(levels):
    _, _, masks, maps = random_case()
    if levels:
        maps = np.round(maps * levels) / levels  # ties between normal and anomalous pixels
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    # (N, 1, H, W) stacks and bool / 0-255 masks read the same
    assert pixel_auroc(masks[:, None].astype(bool), maps[:, None]) == pytest.approx(pixel_auroc(masks, maps))
    assert pixel_ap(masks * 255, maps) == pytest.approx(pixel_ap(masks, maps))


def test_perfect_detector_scores_one_everywhere():
    labels, _, masks, _ = random_case(seed=2)
    rng = np.random.default_rng(2)
    maps = masks + 0.5 * rng.random(masks.shape)  # anomalous pixels in [1, 1.5), normal in [0, 0.5)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    results = compute_all(labels, scores, masks, maps)
    assert set(results) == set(METRIC_NAMES)
    for name, value in results.items():
        assert value == pytest.approx(1.0), name


# --------------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------------
def handmade_case():
    """Two 4x4 images: image 0 has a 2x2 region R1 and a 1-pixel region R2, image 1 is good."""
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, :2, :2] = 1  # R1, 4 pixels
    masks[0, 3, 3] = 1  # R2, 1 pixel, not 8-adjacent to R1
    maps = np.zeros((2, 4, 4))
    maps[0, 0, :2] = 0.9  # half of R1
    maps[0, 1, :2] = 0.5  # the other half of R1
    maps[0, 3, 3] = 0.3  # R2
    maps[0, 0, 2] = 0.7  # normal pixel
    maps[0, 3, 2] = 0.4  # normal pixel
    maps[1, 2, 2] = 0.3  # normal pixel of the good image, tied with R2
    return masks, maps


# 27 normal pixels (11 in image 0, 16 in image 1): scores 0.7, 0.4, 0.3 and 24 zeros.
# Prediction {map > t}, PRO = mean over {R1, R2} of the detected fraction:
#   t >= 0.9        : FPR 0,     PRO 0
#   0.7 <= t < 0.9  : FPR 0,     PRO (2/4 + 0) / 2 = 0.25
#   0.5 <= t < 0.7  : FPR 1/27,  PRO 0.25      (+ normal 0.7)
#   0.4 <= t < 0.5  : FPR 1/27,  PRO (1 + 0) / 2 = 0.5
#   0.3 <= t < 0.4  : FPR 2/27,  PRO 0.5       (+ normal 0.4)
#   0 <= t < 0.3    : FPR 3/27,  PRO 1         (R2 and normal 0.3 together: a diagonal step)
#   t < 0           : FPR 1,     PRO 1
# Curve: (0,0) (0,.25) (1/27,.25) (1/27,.5) (2/27,.5) (3/27,1) (1,1).
# Trapezoid areas of the segments, in units of 1/27: 0.25, 0.5, (0.5 + 1) / 2 = 0.75, then 24 * 1 = 24.
HANDMADE_AUPRO = {
    3 / 27: (0.25 + 0.5 + 0.75) / 3,  # limit on a curve point: 1.5 / 3 = 0.5
    1.5 / 27: (0.25 + 0.5 * 0.5) / 1.5,  # cut in the flat PRO = 0.5 stretch: 0.5 / 1.5 = 1/3
    2.5 / 27: (0.25 + 0.5 + 0.5 * (0.5 + 0.75) / 2) / 2.5,  # cut on the diagonal, PRO 0.75 there: 0.425
    1.0: (0.25 + 0.5 + 0.75 + 24) / 27,  # whole curve: 25.5 / 27
}


@pytest.mark.parametrize("fpr_limit", sorted(HANDMADE_AUPRO))
def test_aupro_matches_hand_computed_value(fpr_limit):
    masks, maps = handmade_case()
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(HANDMADE_AUPRO[fpr_limit], abs=1e-12)


def test_pro_curve_of_handmade_case():
    fpr, pro = pro_curve(*handmade_case())
    # drop zero-length repeats before comparing with the hand-made curve
    points = [p for i, p in enumerate(zip(fpr * 27, pro)) if i == 0 or p != (fpr[i - 1] * 27, pro[i - 1])]
    expected = [(0, 0), (0, 0.25), (1, 0.25), (1, 0.5), (2, 0.5), (3, 1), (27, 1)]
    np.testing.assert_allclose(points, expected, atol=1e-12)


def test_aupro_matches_sort_based_reference_with_ties():
    _, _, masks, maps = random_case(seed=3, n=4, size=12)
    maps = np.round(maps * 8) / 8  # few levels: many ties between normal and anomalous pixels
    for fpr_limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, fpr_limit) == pytest.approx(reference_aupro(masks, maps, fpr_limit), abs=1e-12)


def test_aupro_with_evenly_spaced_thresholds_is_close_to_exact():
    _, _, masks, maps = random_case(seed=4, n=8, size=32)
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=500) == pytest.approx(exact, abs=0.01)
    with pytest.raises(ValueError):
        aupro(masks, maps, num_thresholds=1)


def test_aupro_averages_over_connected_regions_not_pixels():
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, :4, :4] = 1  # big region, 16 pixels, detected
    masks[0, 7, 7] = 1  # small region, 1 pixel, missed: scored below every normal pixel
    maps = 0.5 * masks.astype(float)
    maps[0, 7, 7] = -1.0
    # PRO stays (1 + 0) / 2 = 0.5 up to FPR 1, whereas the detected pixel fraction is 16/17
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_regions_use_8_connectivity():
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # touching diagonally: one region with 8-connectivity
    masks[0, 5:7, 5:7] = 1  # a second region
    maps = 0.5 * masks.astype(float)
    maps[0, 1, 1] = -1.0  # half of the diagonal region missed
    # 8-connectivity: (1/2 + 1) / 2 = 0.75; 4-connectivity would give (1 + 0 + 1) / 3
    assert aupro(masks, maps) == pytest.approx(0.75)


def test_aupro_of_constant_map_is_half_the_limit():
    _, _, masks, _ = random_case(seed=5)
    assert aupro(masks, np.zeros(masks.shape), fpr_limit=0.3) == pytest.approx(0.15)


def test_aupro_rejects_bad_arguments():
    masks, maps = handmade_case()
    with pytest.raises(ValueError):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError):
        aupro(masks, maps[:, :3])


# --------------------------------------------------------------------------------------------------------
# Undefined cases, per-type results, table
# --------------------------------------------------------------------------------------------------------
def test_single_class_cases_give_nan_without_warnings():
    rng = np.random.default_rng(6)
    good_masks = np.zeros((3, 8, 8), dtype=np.uint8)
    maps = rng.random(good_masks.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
        assert math.isnan(image_ap([1, 1, 1], [0.1, 0.2, 0.3]))
        assert math.isnan(pixel_auroc(good_masks, maps))
        assert math.isnan(pixel_ap(good_masks, maps))
        assert math.isnan(aupro(good_masks, maps))
        assert math.isnan(aupro(np.ones_like(good_masks), maps))  # no normal pixel: FPR undefined
        results = compute_all([0, 0, 0], maps.max(axis=(1, 2)), good_masks, maps)
    assert all(math.isnan(v) for v in results.values())


def test_per_type_metrics_uses_good_images_plus_one_type():
    labels, scores, masks, maps = random_case(seed=7, n=8)
    types = ["good"] * 4 + ["crack", "crack", "hole", "hole"]
    results = per_type_metrics(types, labels, scores, masks, maps)
    assert list(results) == ["crack", "hole", "overall"]
    keep = [0, 1, 2, 3, 6, 7]
    assert results["hole"] == compute_all(labels[keep], scores[keep], masks[keep], maps[keep])
    assert results["overall"] == compute_all(labels, scores, masks, maps)


def test_format_table_aligns_rows_and_shows_nan_as_dash():
    row = dict(zip(METRIC_NAMES, [0.98765, 0.5, float("nan"), 1.0, 0.25]))
    table = format_table({"overall": row, "scratch": row})
    lines = table.splitlines()
    assert lines[0].split() == ["type", *METRIC_NAMES]
    assert [line.split()[0] for line in lines[1:]] == ["scratch", "overall"]
    assert lines[1].split()[1:] == ["0.988", "0.500", "-", "1.000", "0.250"]
    assert len({len(line) for line in lines}) == 1


def test_maps_of_different_sizes():
    """Images at their own working scale: a list of (H_i, W_i) maps gives the metrics of the same pixels and
    regions; two images side by side (regions not touching the seam) are the same pixels and regions."""
    rng = np.random.default_rng(3)
    masks = [np.zeros((12, 20), np.uint8), np.zeros((12, 9), np.uint8)]
    masks[0][3:6, 4:9] = 1
    masks[1][7:10, 2:5] = 1
    maps = [rng.random(m.shape) + 0.8 * m for m in masks]
    joined_mask, joined_map = np.concatenate(masks, axis=1)[None], np.concatenate(maps, axis=1)[None]
    assert pixel_auroc(masks, maps) == pytest.approx(pixel_auroc(joined_mask, joined_map))
    assert pixel_ap(masks, maps) == pytest.approx(pixel_ap(joined_mask, joined_map))
    assert aupro(masks, maps) == pytest.approx(aupro(joined_mask, joined_map))
    flat = np.concatenate([m.ravel() for m in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(np.concatenate([m.ravel() for m in masks]), flat))
    res = per_type_metrics(["good", "cut"], [0, 1], [0.1, 0.9], masks, maps)
    assert res["cut"]["aupro"] == pytest.approx(res["overall"]["aupro"])


def test_reconstruction_r2_is_the_share_of_each_images_variance_explained():
    rng = np.random.default_rng(0)
    images = rng.random((3, 3, 8, 8))
    flat = np.broadcast_to(images.mean(axis=(1, 2, 3), keepdims=True), images.shape)
    assert np.allclose(reconstruction_r2(images, images), 1.0)
    assert np.allclose(reconstruction_r2(flat, images), 0.0)  # the image's own mean explains nothing
    half = flat + 0.5 * (images - flat)  # half the contrast: a quarter of the variance left unexplained
    assert np.allclose(reconstruction_r2(half, images), 0.75)
    assert np.allclose(reconstruction_r2(flat + 2 * (images - flat), images), 0.0)  # double contrast: as bad
    grey = np.full((1, 3, 4, 4), 0.5)
    assert np.isnan(reconstruction_r2(grey, grey)).all()  # a flat image has nothing to explain


def test_removal_contrast_is_how_much_more_the_reconstruction_changes_the_defect():
    images = np.full((2, 3, 8, 8), 0.5)
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    rec = images.copy()
    rec[0][:, masks[0]] = 0.9  # image 0: the defect replaced (0.4 off), the good surface changed by 0.1
    rec[0][:, ~masks[0]] = 0.6
    rec[1] += 0.2  # image 1: everything changed alike, nothing removed
    assert np.allclose(removal_contrast(rec, images, masks), [4.0, 1.0])
    assert np.isnan(removal_contrast(rec, images, np.zeros((2, 8, 8), bool))).all()  # no defect: undefined
