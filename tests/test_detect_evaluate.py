"""detect.py and evaluate.py on a tiny model trained from scratch by train.py (CPU, seeded)."""
import csv
import json

import cv2
import numpy as np
import pytest
import torch

import detect
import evaluate
from model import DRAEM
from tests.conftest import WIDGET_PAIR, write_images
from utils.evaluation.metrics import METRIC_NAMES
from utils.storage.pairs import pair_paths, save_pair

BASE = WIDGET_PAIR


def test_single_image_panel_and_score(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    out = tmp_path / "panel.png"
    assert detect.main(["--image_path", str(cls / "test" / "spot" / "000.png"), "--base_model_name", BASE,
                        "--checkpoint_path", str(ckpt), "--output_path", str(out), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= line["score"] <= 1.0 and line["verdict"] in ("OK", "NG") and 0 < line["threshold"] < 1
    assert line["verdict"] == ("NG" if line["score"] > line["threshold"] else "OK")
    img = cv2.imread(str(out))
    h, w = img.shape[:2]
    assert 3 * h < w < 4.5 * h  # four panels side by side
    # the four panels: each quarter of the picture has content (not blank background)
    for q in range(4):
        assert img[:, q * w // 4:(q + 1) * w // 4].std() > 10


def test_folder_mode_writes_png_per_image_and_csv(trained, tmp_path):
    root, cls, ckpt = trained
    out = tmp_path / "results"
    assert detect.main(["--image_path", str(cls / "test"), "--base_model_name", BASE, "--checkpoint_path",
                        str(ckpt), "--output_path", str(out), "--bs", "4"]) == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 6 and {r["verdict"] for r in rows} <= {"OK", "NG"}
    assert len(list(out.rglob("*.png"))) == 6


def test_evaluate_json_and_files(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    out = tmp_path / "eval"
    assert evaluate.main(["--data_path", str(cls), "--base_model_name", BASE, "--checkpoint_path", str(ckpt),
                          "--output_path", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    last = json.loads(printed.strip().splitlines()[-1])
    halves = last.pop("halves")  # a pair with the feature prior: the three rows
    assert set(last) == {"image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "threshold",
                         "false_reject_rate", "defect_recall", "best_recall_at_same_frr"}
    assert all(0 <= v <= 1 for v in last.values())
    assert last["defect_recall"] <= last["best_recall_at_same_frr"]
    assert list(halves) == ["draem", "novelty", "fused"]
    assert halves["fused"] == {k: last[k] for k in METRIC_NAMES}  # the fused row is the pair's own result
    assert "DRAEM alone" in printed and "novelty alone" in printed and "fused (the pair)" in printed
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["type"] for r in rows] == ["spot", "overall", "draem (overall)", "novelty (overall)",
                                         "fused (overall)"] and "defect_recall" in rows[0]
    assert float(rows[2]["image_auroc"]) == pytest.approx(halves["draem"]["image_auroc"], abs=1e-4)
    assert json.loads((out / "metrics.json").read_text())["results"]["overall"]["image_auroc"] == last["image_auroc"]


class _Nothing(torch.nn.Module):
    """A tail table that finds no evidence anywhere: DRAEM then adds nothing to the fused map."""

    def forward(self, x):
        return torch.zeros_like(x)


def test_each_half_row_is_the_pair_scored_by_that_half_alone(trained):
    """evaluate's three rows come from one pass; each half's row equals the same pair scored by that half alone:
    DRAEM without the prior, and the prior with DRAEM's evidence removed."""
    from utils.evaluation.report import evaluate_class
    from utils.inference.detector import Detector
    _, cls, ckpt = trained
    halves = evaluate_class(Detector.from_checkpoint(ckpt, BASE), cls)["overall"]["halves"]
    draem = Detector.from_checkpoint(ckpt, BASE)
    draem.scorer.prior = None
    novelty = Detector.from_checkpoint(ckpt, BASE)
    novelty.scorer.prior.draem_tail = _Nothing()
    for half, detector in (("draem", draem), ("novelty", novelty)):
        alone = evaluate_class(detector, cls)["overall"]
        assert "halves" not in alone or half == "novelty"
        assert {k: alone[k] for k in METRIC_NAMES} == pytest.approx(halves[half], abs=1e-6)


def test_the_map_is_sharpened_along_the_image_and_the_score_is_not(trained):
    """At the default scale the maps shown and measured are reshaped by the prior's fine evidence at the weight the
    pair chose (model/feature_prior.py FineEvidence; DRAEM's own map left out), then guided by the image
    (guided_sharpen, radius map_guide); the scores, and so the threshold, are those of the map before."""
    from model.feature_prior import guided_sharpen
    from model.model_unet import Scorer
    from utils.inference.detector import Detector
    _, cls, ckpt = trained
    det = Detector.from_checkpoint(ckpt, BASE)
    image = det.read(cls / "test" / "spot" / "000.png")
    sharp = det.predict([image], with_reconstruction=False, halves=True)
    prior = det.scorer.prior
    assert det.scorer.guide == 8 and prior.fine is not None  # stored in the pair, weight chosen when trained
    fine_map = prior.fine(prior.features.backbone, image[None])
    det.scorer.guide, fine, prior.fine = 0, prior.fine, None
    plain = det.predict([image], with_reconstruction=False, halves=True)
    for key in ("anomaly_map", "draem_map", "novelty_map"):
        expected = plain[key][0][None] if key == "draem_map" else fine.reshape(plain[key][0][None], fine_map)
        assert torch.allclose(sharp[key][0], guided_sharpen(expected, image[None], 8)[0], atol=1e-6)
        assert not torch.equal(sharp[key][0], plain[key][0])
    for key in ("score", "draem_score", "novelty_score"):
        assert torch.equal(sharp[key][0], plain[key][0])
    # square pairs (the paper, the authors' files) and pairs from before it: no sharpening
    assert Scorer.from_config(None, {"scale": "square", "map_guide": 8}).guide == 0
    assert Scorer.from_config(None, {"scale": "auto", "scale_factor": 1.0}).guide == 0


def test_rec_residual_in_a_pairs_config_decides_how_it_reconstructs(trained, tmp_path):
    """rec_residual is recorded in the pair's config (both recipes: False, docs/training.md); a pair that records
    True loads residual, a pair without it (every pair before it) as the authors' absolute reconstruction."""
    from utils.storage.pairs import load_pair
    _, _, ckpt = trained
    model, meta = load_pair(ckpt, BASE)
    assert meta["config"]["rec_residual"] is False and not model.reconstructive.residual
    for value, expected in ((True, True), (None, False)):
        folder = tmp_path / str(value)
        folder.mkdir()
        for path in pair_paths(ckpt, BASE):
            blob = torch.load(path, map_location="cpu", weights_only=True)
            blob["config"].pop("rec_residual")
            if value is not None:
                blob["config"]["rec_residual"] = value
            torch.save(blob, folder / path.name)
        assert load_pair(folder, BASE)[0].reconstructive.residual is expected


def _pair_thresholds(ckpt, base=BASE):
    return [torch.load(p, map_location="cpu", weights_only=True)["calibration"]["threshold"]
            for p in pair_paths(ckpt, base)]


def test_recalibrate_on_good_folder_writes_the_pair(trained, tmp_path, capsys):
    """--recalibrate: new threshold in both files (weights_only), report on known defects, then evaluation."""
    import shutil
    root, cls, ckpt = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    old = _pair_thresholds(copy)[0]
    assert evaluate.main(["--base_model_name", BASE, "--checkpoint_path", str(copy), "--recalibrate",
                          str(cls / "train" / "good"), "--defect_path", str(cls / "test" / "spot"),
                          "--target_false_reject", "0.05", "--data_path", str(cls), "--output_path",
                          str(tmp_path / "eval"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "new threshold" in out and "known-defective images" in out
    new = _pair_thresholds(copy)
    assert new[0] == new[1] != old
    assert json.loads(out.strip().splitlines()[-1])["threshold"] == new[0]
    calib = torch.load(pair_paths(copy, BASE)[0], weights_only=True)["calibration"]
    assert calib["n_normal"] == 10 and calib["target_false_reject"] == 0.05
    # F1 rule, recalibration only (no --data_path)
    assert evaluate.main(["--base_model_name", BASE, "--checkpoint_path", str(copy), "--recalibrate",
                          str(cls / "test" / "good"), "--defect_path", str(cls / "test" / "spot"),
                          "--threshold_rule", "f1"]) == 0
    assert "F1" in capsys.readouterr().out and _pair_thresholds(copy)[0] != new[0]


def test_recalibrate_bad_inputs_leave_the_pair(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    before = _pair_thresholds(ckpt)
    for argv, expected in ((["--recalibrate", str(tmp_path / "nope")], "nope"),
                           (["--recalibrate", str(tmp_path)], "no images")):
        assert evaluate.main(["--base_model_name", BASE, "--checkpoint_path", str(ckpt), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
    with pytest.raises(SystemExit):  # argparse: f1 needs defects; neither --data_path nor --recalibrate
        evaluate.parse_args(["--base_model_name", BASE, "--recalibrate", "x", "--threshold_rule", "f1"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--base_model_name", BASE])
    assert _pair_thresholds(ckpt) == before


def test_bf16_scores_match_fp32(trained):
    from utils.inference.detector import Detector
    _, cls, ckpt = trained
    x = torch.rand(2, 3, 64, 64)
    scores = []
    for amp in (None, torch.bfloat16):
        detector = Detector.from_checkpoint(ckpt, BASE, torch.device("cpu"), amp)
        # DRAEM's own map: the fused map's DRAEM evidence is a tail table fitted on fp32 maps, whose steep tail
        # (a 1-epoch model's map is nearly flat) magnifies bf16's rounding
        detector.scorer.prior = None
        scores.append(torch.stack(detector.predict(x)["score"]))
    assert (scores[0] - scores[1]).abs().max() < 0.01


def test_original_raw_state_dict_pair_loads(tmp_path, capsys):
    """The authors' release: raw state dicts named <base>.pckl / <base>_seg.pckl, no metadata, 256 px."""
    m = DRAEM(rec_base_width=4, seg_base_width=2)
    torch.save(m.reconstructive.state_dict(), tmp_path / "DRAEM_test_0.0001_700_bs8_bottle_.pckl")
    torch.save(m.discriminative.state_dict(), tmp_path / "DRAEM_test_0.0001_700_bs8_bottle__seg.pckl")
    img = tmp_path / "part.png"
    write_images(tmp_path / "imgs", 1, size=80)
    (tmp_path / "imgs" / "000.png").rename(img)
    out = tmp_path / "orig.png"
    assert detect.main(["--image_path", str(img), "--base_model_name", "DRAEM_test_0.0001_700_bs8_bottle_",
                        "--checkpoint_path", str(tmp_path), "--output_path", str(out)]) == 0
    assert "n/a" in capsys.readouterr().out and out.is_file()


def _bad(argv, capsys, *expected):
    code = detect.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    for e in expected:
        assert e in err


def test_bad_inputs_exit_2_with_one_line(trained, tmp_path, capsys):
    root, cls, ckpt = trained
    img = str(cls / "test" / "spot" / "000.png")
    out = tmp_path / "never.png"
    common = ["--checkpoint_path", str(ckpt), "--output_path", str(out)]
    _bad(["--image_path", str(tmp_path / "nope.png"), "--base_model_name", BASE, *common], capsys, "nope.png")
    (tmp_path / "empty").mkdir()
    _bad(["--image_path", str(tmp_path / "empty"), "--base_model_name", BASE, *common], capsys, "no images")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    _bad(["--image_path", str(broken), "--base_model_name", BASE, *common], capsys, "broken.png")
    # missing checkpoint: the message lists what is there
    _bad(["--image_path", img, "--base_model_name", "nosuch", *common], capsys, "nosuch", BASE + ".pt")
    # mismatched pair: halves of two different runs
    other = tmp_path / "other"
    rec, seg = pair_paths(ckpt, BASE)
    save_pair(DRAEM(4, 2), other, "mix", {"size": 64}, {"threshold": None}, "run-a")
    save_pair(DRAEM(4, 2), other, "mix2", {"size": 64}, {"threshold": None}, "run-b")
    (other / "mix2_seg.pt").replace(other / "mix_seg.pt")
    _bad(["--image_path", img, "--base_model_name", "mix", "--checkpoint_path", str(other),
          "--output_path", str(out)], capsys, "mismatched")
    # not a checkpoint at all
    (other / "junk.pt").write_bytes(b"hello")
    (other / "junk_seg.pt").write_bytes(b"hello")
    _bad(["--image_path", img, "--base_model_name", "junk", "--checkpoint_path", str(other),
          "--output_path", str(out)], capsys, "junk.pt", "not a PyTorch checkpoint")
    # a pickle holding arbitrary objects: refused by weights_only=True, never executed
    torch.save({"state_dict": {}, "evil": np.random.default_rng(0)}, other / "evil.pt")
    torch.save({"state_dict": {}, "evil": np.random.default_rng(0)}, other / "evil_seg.pt")
    _bad(["--image_path", img, "--base_model_name", "evil", "--checkpoint_path", str(other),
          "--output_path", str(out)], capsys, "evil.pt", "refusing")
    assert not out.exists()  # nothing half-written
