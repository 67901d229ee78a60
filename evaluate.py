"""Evaluate a trained checkpoint pair on a labelled MVTec-style class folder (test/<type>/*, ground_truth/...).

    python evaluate.py --data_path path/to/class --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path ./eval_results/ [--json] [--save_images]

Prints a table per defect type and overall (image AUROC/AP, pixel AUROC/AP, AUPRO up to FPR 0.3), the OK/NG
verdicts at the checkpoint's threshold (false-reject rate, recall per type), and writes metrics.csv and metrics.json
to --output_path.

Recalibrate the threshold on the line's own good images (written into both files of the pair), then evaluate:

    python evaluate.py --base_model_name ... --recalibrate line3/good/ [--defect_path line3/bad/] \
        [--target_false_reject 0.02 | --threshold_rule f1] [--data_path path/to/class]
"""
from utils.quiet_start import exit_quietly_on_signals

exit_quietly_on_signals("evaluate.py", __name__)  # a signal during the imports below: one line

import argparse
import json
import logging
import sys
from pathlib import Path

from utils.cli import (UsageError, add_inference_flags, add_max_pixels_flag, add_target_flag, given, resolve_amp,
                       run_script, select_device, warn_ignored)
from utils.data_loader import list_images
from utils.detector import Detector
from utils.evaluation import (VERDICTS, check_outputs, describe, evaluate_class, f1_threshold, fit_threshold,
                              json_safe, recalibration_report, results_text, write_calibration, write_results)
from utils.files import check_output_dir, refuse_inside, tidy_output_folders
from utils.metrics import METRIC_NAMES

log = logging.getLogger("evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate DRAEM on a labelled MVTec-style class folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_path", default=None,
                   help="class folder with test/<type>/* and ground_truth/<type>/* (optional with --recalibrate)")
    p.add_argument("--output_path", default="./eval_results/", help="folder for metrics.csv / metrics.json")
    add_inference_flags(p, bs_help="tiles per forward pass (a square image is one tile)",
                        pair_help=", e.g. DRAEM_test_0.0001_700_bs8_bottle_",
                        pair_required=True)
    p.add_argument("--save_images", action="store_true", help="also write the 4-panel PNG of every test image")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the overall metrics")
    g = p.add_argument_group("Threshold (recalibration on the line's own images; README 'Choosing the threshold')")
    g.add_argument("--recalibrate", default=None, metavar="GOOD_DIR",
                   help="score this folder of good images, recompute the OK/NG threshold and write it into the pair")
    g.add_argument("--defect_path", default=None, metavar="DEFECT_DIR",
                   help="with --recalibrate: known-defective images; reports how many the new threshold catches")
    g.add_argument("--threshold_rule", choices=("false_reject", "f1"), default="false_reject",
                   help="false_reject: aim at --target_false_reject on the good images; f1: the best F1 on good "
                        "and --defect_path images (anomalib's adaptive threshold)")
    add_target_flag(g, "; rule false_reject")
    add_max_pixels_flag(p)
    args = p.parse_args(argv)
    if args.data_path is None and args.recalibrate is None:
        p.error("give --data_path (evaluate), --recalibrate GOOD_DIR (new threshold), or both")
    if args.defect_path is not None and args.recalibrate is None:
        p.error("argument --defect_path: only with --recalibrate")
    if args.threshold_rule == "f1" and args.defect_path is None:
        p.error("argument --threshold_rule f1: needs --defect_path (known-defective images)")
    if given(sys.argv[1:] if argv is None else argv, "--target_false_reject") and \
            (args.recalibrate is None or args.threshold_rule == "f1"):
        warn_ignored("--target_false_reject", "the threshold is set only by --recalibrate with --threshold_rule "
                                              "false_reject")
    return args


def _folder_images(flag, folder):
    files = list_images(folder) if Path(folder).is_dir() else []
    if not files:
        raise UsageError(f"{flag} {folder}: no images in this folder" if Path(folder).is_dir()
                         else f"{flag} {folder} is not a folder")
    return files


def recalibrate(args, detector):
    """Score --recalibrate (and --defect_path), fit the new threshold, write it into the pair; print a report."""
    good = detector.score_files(_folder_images("--recalibrate", args.recalibrate))
    bad = detector.score_files(_folder_images("--defect_path", args.defect_path)) \
        if args.defect_path else None
    if args.threshold_rule == "f1":
        calib = f1_threshold(good, bad)
    else:
        calib = fit_threshold(good, args.target_false_reject)
    if calib["threshold"] is None:
        raise UsageError(f"--recalibrate {args.recalibrate}: {len(good)} readable good images are too few")
    calib["source"] = str(args.recalibrate)
    print("\n".join(recalibration_report(detector.threshold, calib, bad)))
    write_calibration(args.checkpoint_path, args.base_model_name, calib)
    detector.threshold, detector.meta["calibration"] = calib["threshold"], calib


def run(args):
    """Check the outputs, load the pair, recalibrate (when asked), evaluate (when --data_path is given)."""
    if args.data_path is not None and not Path(args.data_path).is_dir():
        raise UsageError(f"--data_path {args.data_path} is not a folder")
    if args.data_path is not None:
        check_outputs(args.output_path)
        refuse_inside(args.output_path, args.data_path, in_flag="--data_path")
        tidy_output_folders([args.output_path, Path(args.output_path) / "images"])
    if args.recalibrate:  # the pair is rewritten: refused before any scoring when it cannot be
        check_output_dir(args.checkpoint_path, "--checkpoint_path")
    device = select_device(args.gpu_id)
    log.info("device: %s", device)
    detector = Detector.from_checkpoint(args.checkpoint_path, args.base_model_name, device,
                                        resolve_amp(args.amp, device), bs=args.bs, max_pixels=args.max_pixels)
    if args.recalibrate:
        recalibrate(args, detector)
    if args.data_path is None:
        return
    images_dir = Path(args.output_path) / "images" if args.save_images else None
    results = evaluate_class(detector, args.data_path, images_dir)
    calibration = detector.meta["calibration"]
    print(results_text(results, title=f"{args.base_model_name} on {args.data_path}\n{describe(calibration)}"))
    write_results(results, args.output_path, {"base_model_name": args.base_model_name,
                                              **detector.meta["config"], "calibration": calibration})
    if args.json:
        print(json.dumps(json_safe({k: results["overall"][k] for k in (*METRIC_NAMES, *VERDICTS)})))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    return run_script("evaluate.py", lambda stop: run(args))  # bad input: 2; a failed write: 1; a signal


if __name__ == "__main__":
    sys.exit(main())
