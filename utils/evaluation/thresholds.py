"""The OK/NG threshold: calibrated on good images for a target false-reject rate (an order statistic, or a fitted
Gumbel tail for small targets), the F1 threshold, recall at a false-reject rate, the verdict rule, and how a
calibration is described and rewritten into a pair (recalibration)."""
import logging
import math
import uuid
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, stats

from utils.config import Config
from utils.storage.locks import hold_checkpoint_names, run_name
from utils.storage.pairs import load_pair, save_pair

log = logging.getLogger(__name__)


MIN_FIT = 3  # fewer good images give no threshold at all


N_SIM = 4000  # simulated calibration sets behind the prediction factor and the interval


INTERVAL = 0.9


TAIL_SHARE = 0.5  # the largest half of the good scores is fitted


EPS = 1e-6  # scores are clipped to [EPS, 1 - EPS] before the logit


RULE_ORDER = "order statistic of the good scores with expected false-reject rate <= target (distribution-free)"


RULE_F1 = "max F1 over good and defective images (anomalib's adaptive threshold)"
RULE_TAIL = "Gumbel tail fitted to the upper half of logit scores: prediction bound at the target rate"


def calibrate_threshold(normal_scores, target_false_reject):
    """Image-score threshold from held-out *normal* scores only, aimed at a false-reject rate (fit_threshold).

    No defect images are needed (or used); the calibration dict records the rule, n and the expected rate.
    """
    return fit_threshold(torch.as_tensor(normal_scores, dtype=torch.float64).numpy(), target_false_reject)


def _scores(x):
    """Any 1-D array-like of scores -> float64 numpy array (N,)."""
    return np.asarray(x, dtype=np.float64).ravel()


def _logit(s):
    s = np.clip(s, EPS, 1 - EPS)
    return np.log(s) - np.log1p(-s)


def _expit(z):
    return float(1.0 / (1.0 + math.exp(-z)))


def _gumbel_ppf(p):
    return -np.log(-np.log(p))  # quantile of the standard Gumbel


def _gumbel_sf(x):
    return -np.expm1(-np.exp(-x))  # P(X > x) for the standard Gumbel


def _tail_fit(z):
    """Gumbel location and scale fitted to the upper half of samples z (..., n) on a quantile plot (rows apart).

    Least squares of the k = ceil(n / 2) largest values on the standard Gumbel quantiles of their ranks (Blom
    positions): the lower half, which decides no false reject, cannot sway the tail. Linear in the sorted sample
    and shift/scale equivariant, so the small-sample factor of `_pivots` is exact for it.
    """
    n = z.shape[-1]
    k = max(MIN_FIT, math.ceil(n * TAIL_SHARE))
    positions = (np.arange(n - k, n) + 1 - 0.375) / (n + 0.25)  # (k,)
    design = np.stack([np.ones(k), _gumbel_ppf(positions)], axis=1)  # (k, 2)
    coef = np.sort(z, axis=-1)[..., n - k:] @ np.linalg.pinv(design).T  # (..., 2): loc, scale
    return coef[..., 0], np.maximum(coef[..., 1], 1e-3)  # identical scores: a narrow law, not a zero scale


def _pivots(n, seed):
    """(loc, scale) fitted to N_SIM standard-Gumbel samples of size n: the law of the estimation error.

    For a location-scale law, (loc_hat - loc) / scale and scale_hat / scale do not depend on the true values, so
    these draws give the exact small-sample behaviour of any threshold loc_hat + c * scale_hat.
    """
    n_sim = N_SIM if n <= 500 else max(500, 2_000_000 // n)  # bound memory for large folders
    return _tail_fit(np.random.default_rng(seed).gumbel(size=(n_sim, n)))  # (n_sim,), (n_sim,)


def _prediction_factor(a, b, target):
    """c with mean P(new good > loc_hat + c * scale_hat) = target, over the pivot draws a, b (n_sim,)."""
    return optimize.brentq(lambda c: _gumbel_sf(a + b * c).mean() - target, -10.0, 200.0, xtol=1e-6)


def _order_statistic_threshold(s, target):
    """Distribution-free threshold: the k-th smallest of the n scores, k = ceil((n + 1) * (1 - target)).

    For exchangeable good parts a new one exceeds the k-th smallest of n with probability (n + 1 - k) / (n + 1)
    exactly, whatever the law of the scores (the rank argument of conformal prediction), and the false-reject
    rate of that threshold follows Beta(n + 1 - k, k). Returns None when k > n (too few images for the target).
    """
    n = len(s)
    k = math.ceil((n + 1) * (1 - target) - 1e-9)
    if k > n:
        return None
    lo, hi = stats.beta.ppf([(1 - INTERVAL) / 2, (1 + INTERVAL) / 2], n + 1 - k, k)
    return {"threshold": float(np.sort(s)[k - 1]), "rule": RULE_ORDER, "expected_false_reject": (n + 1 - k) / (n + 1),
            "false_reject_interval": [float(lo), float(hi)]}


def _tail_threshold(s, target, seed):
    """Threshold extrapolated from the Gumbel tail of the logit scores (module docstring), for any n >= MIN_FIT."""
    z = _logit(s)  # (n,)
    loc, scale = (float(v) for v in _tail_fit(z))
    a, b = _pivots(len(z), seed)
    c = _prediction_factor(a, b, target)
    # the false-reject rate of this threshold under every (loc, scale) the data allow: sf(a + b * c)
    frr = _gumbel_sf(a + b * c)  # (n_sim,)
    lo, hi = np.quantile(frr, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
    return {"threshold": _expit(loc + c * scale), "rule": RULE_TAIL, "expected_false_reject": float(frr.mean()),
            "false_reject_interval": [float(lo), float(hi)], "logit_tail_loc": loc, "logit_tail_scale": scale}


def fit_threshold(normal_scores, target_false_reject=Config.target_false_reject, seed=0):
    """Threshold for `target_false_reject` from good-image scores (n,); returns the calibration dict.

    The order statistic when n reaches the target (n + 1 >= 1 / target), else the fitted tail. Keys: threshold
    (None when n < MIN_FIT), rule, target_false_reject, expected_false_reject, false_reject_interval ([lo, hi],
    the INTERVAL interval), n_normal, held_out_false_reject (share of the n images above the threshold),
    normal_median, normal_max (and logit_tail_loc / logit_tail_scale for the fitted tail).
    """
    if not 0 < target_false_reject < 0.5:
        raise ValueError(f"target false-reject rate must be in (0, 0.5), got {target_false_reject}")
    s = _scores(normal_scores)
    calib = {"target_false_reject": float(target_false_reject), "n_normal": len(s)}
    if len(s) < MIN_FIT:
        log.warning("only %d good images to calibrate on (need %d): no threshold", len(s), MIN_FIT)
        return {**calib, "threshold": None, "rule": f"none: fewer than {MIN_FIT} held-out good images"}
    fit = _order_statistic_threshold(s, target_false_reject) or _tail_threshold(s, target_false_reject, seed)
    return {**calib, **fit, "interval_level": INTERVAL, "held_out_false_reject": float(np.mean(s > fit["threshold"])),
            "normal_median": float(np.median(s)), "normal_max": float(s.max())}


def f1_threshold(normal_scores, defect_scores):
    """The threshold of best F1 (defects positive) over good (n,) and defective (m,) scores; calibration dict.

    Candidates are midpoints between consecutive distinct scores, so no calibration image sits on the threshold;
    among equal F1 the highest threshold (fewest false rejects) wins.
    """
    good, bad = _scores(normal_scores), _scores(defect_scores)
    if len(good) == 0 or len(bad) == 0:
        raise ValueError("the F1 threshold needs both good and defective images")
    values = np.unique(np.concatenate([good, bad]))  # sorted, distinct
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2])  # (K,)
    caught = (bad[None, :] > candidates[:, None]).sum(axis=1)  # (K,) true positives
    rejected = (good[None, :] > candidates[:, None]).sum(axis=1)  # (K,) false positives
    f1 = 2 * caught / (2 * caught + rejected + (len(bad) - caught))
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # last maximum = highest threshold
    threshold = float(min(max(candidates[best], 0.0), 1.0))
    return {"threshold": threshold, "rule": RULE_F1, "f1": float(f1[best]), "n_normal": len(good),
            "n_defect": len(bad), "held_out_false_reject": float(rejected[best] / len(good)),
            "defect_recall": float(caught[best] / len(bad)), "normal_median": float(np.median(good)),
            "normal_max": float(good.max())}


def best_recall_at(normal_scores, defect_scores, false_reject_rate):
    """The highest share of defects any threshold catches while rejecting at most `false_reject_rate` of goods."""
    good, bad = np.sort(_scores(normal_scores))[::-1], _scores(defect_scores)  # good: descending
    if len(bad) == 0:
        return float("nan")
    allowed = int(math.floor(false_reject_rate * len(good) + 1e-9))  # goods that may be rejected
    lowest = good[allowed] if allowed < len(good) else -np.inf  # NG above it: at most `allowed` goods
    return float(np.mean(bad > lowest))


def verdict_metrics(labels, scores, threshold):
    """Verdicts at `threshold` for labels (N,) (0 good, 1 defective) and scores (N,); None values without one.

    best_recall_at_same_frr is for information: the best recall any threshold reaches without rejecting more
    good images than this one did (it is chosen by looking at the test labels, so it is not a threshold to use).
    """
    labels, scores = _scores(labels) > 0.5, _scores(scores)
    good, bad = scores[~labels], scores[labels]
    out = {"threshold": threshold, "n_good": len(good), "n_defect": len(bad)}
    if threshold is None:
        return {**out, "false_reject_rate": None, "defect_recall": None, "best_recall_at_same_frr": None}
    n_rejected, n_caught = int(np.sum(good > threshold)), int(np.sum(bad > threshold))
    frr = n_rejected / len(good) if len(good) else float("nan")
    return {**out, "n_false_reject": n_rejected, "n_caught": n_caught, "false_reject_rate": frr,
            "defect_recall": n_caught / len(bad) if len(bad) else float("nan"),
            "best_recall_at_same_frr": best_recall_at(good, bad, frr) if len(good) else float("nan")}


def describe(calib):
    """One line for people: the threshold, how it was chosen and how sure it is."""
    t = calib.get("threshold")
    if t is None:
        return f"no threshold ({calib.get('rule', 'none')})"
    text = f"threshold {t:.4f} from {calib.get('n_normal', '?')} good images"
    if calib.get("rule") in (RULE_ORDER, RULE_TAIL):
        text += " (order statistic)" if calib["rule"] == RULE_ORDER else " (fitted tail)"
    if "target_false_reject" in calib and "false_reject_interval" in calib:
        lo, hi = calib["false_reject_interval"]
        text += (f", target false-reject {calib['target_false_reject']:.1%}: expected "
                 f"{calib['expected_false_reject']:.1%} ({calib.get('interval_level', INTERVAL):.0%} interval "
                 f"{lo:.1%}-{hi:.1%}), {calib['held_out_false_reject']:.1%} of them above it")
    elif "f1" in calib:
        text += (f" and {calib['n_defect']} defective: F1 {calib['f1']:.3f}, recall {calib['defect_recall']:.1%}, "
                 f"false-reject {calib['held_out_false_reject']:.1%}")
    else:
        text += f" ({calib.get('rule', 'unknown rule')})"
    return text


def write_calibration(checkpoint_path, base, calibration):
    """Store `calibration` in the pair `base` (both files, with the existing save/load of utils/storage/pairs.py).

    A writer: it holds the pair's name (no concurrent train.py) and finishes interrupted writes first. The weights
    are unchanged; the pair gets a new pair id, so two files from before and after are never taken for one pair.
    Returns the paths written.
    """
    with hold_checkpoint_names(checkpoint_path, [run_name(base)]):  # the training run that writes it
        model, meta = load_pair(checkpoint_path, base)
        pair_id = f"{(meta.get('pair_id') or 'original').split('+')[0]}+recalibrated-{uuid.uuid4().hex[:8]}"
        paths = save_pair(model, Path(checkpoint_path), base, meta["config"], calibration, pair_id)
    log.info("wrote %s: %s", ", ".join(str(p) for p in paths), describe(calibration))
    return paths


def recalibration_report(old_threshold, calib, defect_scores=None):
    """Lines for people: the new threshold and, with known defects, how many each threshold catches."""
    lines = [f"old threshold: {'none' if old_threshold is None else f'{old_threshold:.4f}'}",
             f"new {describe(calib)}"]
    if defect_scores is not None and len(defect_scores):
        bad = _scores(defect_scores)
        for name, t in (("old", old_threshold), ("new", calib["threshold"])):
            if t is not None:
                lines.append(f"{name} threshold catches {int(np.sum(bad > t))} of {len(bad)} known-defective images")
    return lines
