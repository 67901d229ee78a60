"""utils/evaluation/report.py and thresholds.py: evaluation of a test split and threshold calibration (seeded numpy cases, plus one
pair written and reloaded at tiny widths)."""
import json
import math

import numpy as np
import pytest
import torch

from model import DRAEM
from utils.evaluation.metrics import METRIC_NAMES
from utils.evaluation.report import VERDICTS, add_verdicts, format_verdicts, json_safe, results_text, write_results
from utils.evaluation.thresholds import (RULE_ORDER, RULE_TAIL, best_recall_at, calibrate_threshold, describe,
                                         f1_threshold, fit_threshold, recalibration_report, verdict_metrics,
                                         write_calibration)
from utils.storage.pairs import load_pair, pair_paths, save_pair

RESULTS = {"crack": dict.fromkeys(METRIC_NAMES, 0.5), "overall": {**dict.fromkeys(METRIC_NAMES, 0.75),
                                                                   "aupro": math.nan}}


def test_text_files_and_nan(tmp_path):
    text = results_text(RESULTS, "my title")
    overall = next(line for line in text.splitlines() if line.startswith("overall"))
    assert text.startswith("\nmy title\n") and overall.split()[-1] == "-"  # nan AUPRO
    assert "no threshold" in text.splitlines()[-1]  # the verdicts follow the table
    assert json_safe(RESULTS)["overall"]["aupro"] is None
    write_results(RESULTS, tmp_path / "out", {"size": 32})
    assert (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0] == ",".join(["type", *METRIC_NAMES,
                                                                                     *VERDICTS])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["checkpoint"] == {"size": 32} and saved["results"]["crack"]["image_auroc"] == 0.5


def good_scores(n, seed=0, loc=-3.0, scale=0.5):
    """Scores in (0, 1) whose logits follow a Gumbel law (the max of a map, as image scores are)."""
    z = np.random.default_rng(seed).gumbel(loc, scale, n)
    return 1 / (1 + np.exp(-z))


def true_false_reject(threshold, loc=-3.0, scale=0.5):
    z = np.log(threshold) - np.log1p(-threshold)
    return -np.expm1(-np.exp(-(z - loc) / scale))


@pytest.mark.parametrize("n, rule", [(30, RULE_TAIL), (57, RULE_ORDER)])
def test_fit_records_rule_sample_size_target_and_interval(n, rule):
    calib = fit_threshold(good_scores(n), 0.02)
    assert 0 < calib["threshold"] < 1 and calib["rule"] == rule
    assert calib["n_normal"] == n and calib["target_false_reject"] == 0.02
    lo, hi = calib["false_reject_interval"]
    assert lo < 0.02 < hi and 0.015 < calib["expected_false_reject"] <= 0.02 + 1e-3
    assert 0 <= calib["held_out_false_reject"] <= 1
    # plain types only: the dict goes into a weights_only checkpoint
    assert all(isinstance(v, (int, float, str, list)) for v in calib.values())


def test_order_statistic_when_the_images_reach_the_target():
    """n = 99, 5%: the 95th smallest score; a new good part exceeds it with probability 5/100, whatever the law."""
    s = good_scores(99)
    calib = fit_threshold(s, 0.05)
    assert calib["threshold"] == np.sort(s)[94] and calib["expected_false_reject"] == pytest.approx(0.05)
    assert calib["held_out_false_reject"] == pytest.approx(4 / 99)
    rates = [true_false_reject(fit_threshold(good_scores(99, seed=s), 0.05)["threshold"]) for s in range(200)]
    assert np.mean(rates) == pytest.approx(0.05, abs=0.006)


def test_fitted_tail_meets_the_target_on_average_over_calibration_sets():
    """Thirty images cannot reach 2% by rank: the fitted tail's rate averages out at the target."""
    rates = [true_false_reject(fit_threshold(good_scores(30, seed=s), 0.02, seed=s)["threshold"])
             for s in range(60)]
    assert np.mean(rates) == pytest.approx(0.02, abs=0.007)


def test_more_images_narrow_the_interval_and_lower_targets_raise_the_threshold():
    small, large = fit_threshold(good_scores(10)), fit_threshold(good_scores(200))
    width = [c["false_reject_interval"][1] - c["false_reject_interval"][0] for c in (small, large)]
    assert width[1] < width[0]
    assert fit_threshold(good_scores(50), 0.01)["threshold"] > fit_threshold(good_scores(50), 0.05)["threshold"]


def test_one_unusual_good_image_does_not_set_the_threshold():
    """The old q99-plus-margin rule put the threshold above the largest score; the fitted tail does not."""
    s = good_scores(30)
    s[0] = 0.9  # one odd good image
    calib = fit_threshold(s, 0.02)
    assert calib["threshold"] < 0.9 and calib["held_out_false_reject"] > 0


def test_too_few_images_and_bad_targets():
    assert fit_threshold([0.1, 0.2])["threshold"] is None
    assert fit_threshold([0.1, 0.1, 0.1])["threshold"] is not None  # identical scores: no division by zero
    for target in (0, 0.5, -1):
        with pytest.raises(ValueError):
            fit_threshold(good_scores(20), target)


def test_f1_threshold_separates_and_prefers_fewer_rejects():
    calib = f1_threshold([0.1, 0.2, 0.3], [0.6, 0.7])
    assert 0.3 < calib["threshold"] < 0.6 and calib["f1"] == 1.0 and calib["defect_recall"] == 1.0
    calib = f1_threshold([0.1, 0.2, 0.5], [0.4, 0.6, 0.7])  # best: NG above 0.45 (F1 0.8) or above 0.3 (0.857)
    assert calib["threshold"] == pytest.approx(0.3) and calib["f1"] == pytest.approx(6 / 7)
    with pytest.raises(ValueError):
        f1_threshold([0.1], [])


def test_best_recall_at_same_false_reject_rate():
    good, bad = [0.1, 0.2, 0.3, 0.9], [0.25, 0.35, 0.95]
    assert best_recall_at(good, bad, 0.0) == pytest.approx(1 / 3)  # above 0.9 only
    assert best_recall_at(good, bad, 0.25) == pytest.approx(2 / 3)  # one good may go: above 0.3
    assert best_recall_at(good, bad, 1.0) == 1.0


def test_verdict_metrics_at_threshold():
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.25, 0.35, 0.95]
    m = verdict_metrics(labels, scores, 0.5)
    assert m["false_reject_rate"] == 0.25 and m["defect_recall"] == pytest.approx(1 / 3)
    assert m["best_recall_at_same_frr"] == pytest.approx(2 / 3) and m["n_false_reject"] == 1 and m["n_caught"] == 1
    assert verdict_metrics(labels, scores, None)["false_reject_rate"] is None


def test_add_and_format_verdicts_per_type():
    types = np.array(["good", "good", "good", "crack", "pit", "pit"])
    labels, scores = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.6, 0.7, 0.3, 0.8])
    results = add_verdicts({"crack": {}, "pit": {}, "overall": {}}, types, labels, scores, 0.5)
    assert results["crack"]["defect_recall"] == 1.0 and results["pit"]["defect_recall"] == 0.5
    assert results["overall"]["false_reject_rate"] == pytest.approx(1 / 3)
    text = format_verdicts(results)
    assert "1 of 3" in text and "pit" in text and "50.0%" in text
    assert "no threshold" in format_verdicts(add_verdicts({"overall": {}}, types, labels, scores, None))


def test_describe_and_report_lines():
    calib = fit_threshold(good_scores(40))
    assert "40 good images" in describe(calib) and "interval" in describe(calib)
    lines = recalibration_report(0.99, calib, defect_scores=[0.5, 0.995])
    assert lines[-2] == "old threshold catches 1 of 2 known-defective images"
    assert "none" in describe({"threshold": None, "rule": "none"})


def test_write_calibration_updates_both_files_atomically(tmp_path):
    model = DRAEM(4, 2)
    save_pair(model, tmp_path, "part_", {"size": 32}, {"threshold": 0.9, "rule": "old"}, "run-1")
    calib = fit_threshold(good_scores(30), 0.02)
    rec, seg = write_calibration(tmp_path, "part_", calib)
    for path in (rec, seg):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        assert obj["calibration"]["threshold"] == calib["threshold"] and obj["config"] == {"size": 32}
    assert torch.load(rec, weights_only=True)["pair_id"] == torch.load(seg, weights_only=True)["pair_id"] != "run-1"
    reloaded, meta = load_pair(tmp_path, "part_")
    assert meta["calibration"]["n_normal"] == 30
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in pair_paths(tmp_path, "part_"))


def test_write_calibration_failure_leaves_the_old_pair(tmp_path, monkeypatch):
    save_pair(DRAEM(4, 2), tmp_path, "part_", {"size": 32}, {"threshold": 0.9, "rule": "old"}, "run-1")

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        write_calibration(tmp_path, "part_", fit_threshold(good_scores(30)))
    monkeypatch.undo()
    assert load_pair(tmp_path, "part_")[1]["calibration"]["threshold"] == 0.9
    assert len(list(tmp_path.iterdir())) == 2  # no temp files left


def test_write_calibration_on_the_authors_raw_pair(tmp_path):
    """A released raw pair (*.pckl, no metadata) gets our self-describing .pt pair with the threshold."""
    model = DRAEM(4, 2)
    torch.save(model.reconstructive.state_dict(), tmp_path / "orig_.pckl")
    torch.save(model.discriminative.state_dict(), tmp_path / "orig__seg.pckl")
    write_calibration(tmp_path, "orig_", fit_threshold(good_scores(30)))
    _, meta = load_pair(tmp_path, "orig_")
    assert not meta["original"] and meta["config"]["size"] == 256 and meta["calibration"]["threshold"] is not None


def test_calibration_uses_normal_scores_only():
    """fit_threshold does the statistics (tested above); here: training's call of it on its held-out scores."""
    calib = calibrate_threshold(torch.linspace(0.1, 0.2, 101), 0.05)
    assert calib["n_normal"] == 101 and calib["target_false_reject"] == 0.05
    assert calib["normal_median"] == pytest.approx(0.15) and 0.19 < calib["threshold"] <= 0.2
    assert 0 < calibrate_threshold([0.9, 0.95, 1.0], 0.02)["threshold"] <= 1.0  # scores are probabilities

