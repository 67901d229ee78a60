"""Evaluate a trained checkpoint pair on a labelled MVTec-style class folder (test/<type>/*, ground_truth/...).

    python evaluate.py --data_path path/to/class --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path ./eval_results/ [--json] [--save_images]

Prints a table per defect type and overall (image AUROC/AP, pixel AUROC/AP, AUPRO up to FPR 0.3), the OK/NG
verdicts at the checkpoint's threshold (false-reject rate, recall per type), and writes metrics.csv and metrics.json
to --output_path.

With --save_images, also the 4-panel picture of every test image and index.html, the results page (overlay
thumbnails, a threshold slider showing the false-reject rate and recall at its value).

Without --base_model_name each class is scored by its newest complete pair in --checkpoint_path (as detect.py picks
one; a taught pair, train.py --add_good, included). Every class of an MVTec-style root at once (as the authors' test
script): --base_model_name is then the prefix to which "_<class>_" is appended (a trailing "_" of the prefix is not
doubled), so DRAEM_test_0.0001_700_bs8 loads DRAEM_test_0.0001_700_bs8_bottle_ for bottle/; one table per class,
then one row per class and their mean:

    python evaluate.py --data_path ./datasets/mvtec/ --obj_id -1 --base_model_name DRAEM_test_0.0001_700_bs8 \
        --output_path ./eval_results/   # eval_results/<class>/metrics.csv, metrics.json (, index.html)

Recalibrate the threshold on the line's own good images (written into both files of the pair), then evaluate:

    python evaluate.py --base_model_name ... --recalibrate line3/good/ [--defect_path line3/bad/] \
        [--target_false_reject 0.02 | --threshold_rule f1] [--data_path path/to/class]
"""
from utils.cli import (ScriptExit, add_inference_flags, add_max_pixels_flag, add_target_flag, exit_quietly_on_signals,
                       given)
from utils.runtime import UsageError, resolve_amp, select_device, warn_ignored

exit_quietly_on_signals("evaluate.py", __name__)  # a signal during the imports below: one line

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from utils.data_loader import list_images
from utils.evaluation.metrics import METRIC_NAMES, format_table
from utils.evaluation.report import VERDICTS, check_outputs, evaluate_class, json_safe, results_text, write_results
from utils.evaluation.thresholds import describe, f1_threshold, fit_threshold, recalibration_report, write_calibration
from utils.inference.detector import Detector
from utils.outputs.page import write_results_page
from utils.storage.atomic import tidy_output_folders
from utils.storage.output_rules import check_output_dir, refuse_input_overwrite, refuse_inside
from utils.storage.pairs import find_pair, newest_complete_pair

log = logging.getLogger("evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate DRAEM on a labelled MVTec-style class folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_path", default=None,
                   help="class folder with test/<type>/* and ground_truth/<type>/* (optional with --recalibrate); "
                        "or a root of class folders with --obj_id")
    p.add_argument("--obj_id", type=int, default=None,
                   help="with a root --data_path: the class index (sorted names) or -1 for every class; "
                        "--base_model_name is then the prefix of the pairs (<prefix>_<class>_)")
    p.add_argument("--output_path", default="./eval_results/", help="folder for metrics.csv / metrics.json")
    add_inference_flags(p, bs_help="tiles per forward pass (a square image is one tile)",
                        pair_help=", e.g. DRAEM_test_0.0001_700_bs8_bottle_; with --obj_id the prefix, e.g. "
                                  "DRAEM_test_0.0001_700_bs8; omit to use each class's newest complete pair")
    p.add_argument("--save_images", action="store_true",
                   help="also write the 4-panel PNG of every test image and index.html, the results page")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the overall metrics "
                                                         "(with --obj_id: per class and their mean)")
    g = p.add_argument_group("Threshold (recalibration on the line's own images; docs/thresholds.md)")
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
    if args.recalibrate is not None and args.base_model_name is None:
        p.error("argument --recalibrate: needs --base_model_name (the pair it rewrites)")
    if args.obj_id is not None and args.recalibrate is not None:
        p.error("argument --recalibrate: one pair at a time, not with --obj_id")
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
    images = {"--recalibrate": _folder_images("--recalibrate", args.recalibrate),
              "--defect_path": _folder_images("--defect_path", args.defect_path) if args.defect_path else []}
    refuse_input_overwrite(find_pair(args.checkpoint_path, args.base_model_name), images, "--checkpoint_path")
    good = detector.score_files(images["--recalibrate"])
    bad = detector.score_files(images["--defect_path"]) if args.defect_path else None
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


def class_names(data_path, obj_id):
    """None for a class folder (test/ inside); else the classes --obj_id picks from a root of class folders."""
    root = Path(data_path)
    if (root / "test").is_dir():
        return None
    classes = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if not classes:
        raise UsageError(f"--data_path {root}: no test/ folder, nor class folders holding one")
    listing = ", ".join(f"{i}={c}" for i, c in enumerate(classes))
    if obj_id is None:
        raise UsageError(f"--data_path {root} is a root of classes ({listing}); give --obj_id (-1 = all)")
    if obj_id == -1:
        return classes
    if not 0 <= obj_id < len(classes):
        raise UsageError(f"--obj_id {obj_id} is out of range for {root} (classes: {listing}; -1 = all)")
    return [classes[obj_id]]


def pair_name(prefix, obj_name):
    """The pair train.py writes for a class (base_model_name(lr, epochs, bs, obj) ends in "_<obj>_") from the
    prefix; as the authors' test script: prefix + "_" + obj + "_", a trailing "_" of the prefix not doubled."""
    return f"{prefix.rstrip('_')}_{obj_name}_"


def load_detector(args, base, device):
    return Detector.from_checkpoint(args.checkpoint_path, base, device, resolve_amp(args.amp, device), bs=args.bs,
                                    max_pixels=args.max_pixels)


def evaluate_one(args, detector, base, class_dir, output):
    """One class: print its table, write metrics.csv / metrics.json (with --save_images also the pictures and
    index.html) to `output`; returns the overall metrics and verdicts."""
    page = [] if args.save_images else None
    tidy_output_folders([output, Path(output) / "images"])
    results = evaluate_class(detector, class_dir, Path(output) / "images" if args.save_images else None, page=page)
    calibration = detector.meta["calibration"]
    print(results_text(results, title=f"{base} on {class_dir}\n{describe(calibration)}"))
    write_results(results, output, {"base_model_name": base, **detector.meta["config"], "calibration": calibration})
    if page is not None:
        write_results_page(output, page, detector.threshold, title=f"{detector.pair_label()} on {class_dir}")
    overall = results["overall"]
    summary = {k: overall[k] for k in (*METRIC_NAMES, *VERDICTS)}
    if "halves" in overall:  # the three rows of a pair with a prior: DRAEM alone, the novelty alone, fused
        summary["halves"] = overall["halves"]
    return summary


def mean_metrics(rows):
    """Each metric's mean over the classes where it is defined (None when nowhere); the threshold has none."""
    mean = {}
    for k in (*METRIC_NAMES, *VERDICTS):
        values = [r[k] for r in rows if r.get(k) is not None and r[k] == r[k]]
        if k != "threshold":
            mean[k] = float(np.mean(values)) if values else None
    return mean


def format_mean_verdicts(mean):
    """The mean verdicts at each class's stored threshold, as a line under the table."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"
    return (f"mean at the stored thresholds: false-reject rate {pct(mean['false_reject_rate'])}, "
            f"recall {pct(mean['defect_recall'])}")


def evaluate_all(args, device, classes):
    """Each class with its pair, into <output>/<class>/; then a table of the classes and their mean.
    Returns {"classes": {class: overall}, "mean": {...}}."""
    root, out = Path(args.data_path), Path(args.output_path)
    bases = {c: pair_name(args.base_model_name, c) if args.base_model_name
             else newest_complete_pair(args.checkpoint_path, obj_name=c) for c in classes}
    for c in classes:  # before any work: every output folder and every pair
        check_outputs(out / c, find_pair(args.checkpoint_path, bases[c]), root / c if args.save_images else None)
    overall = {c: evaluate_one(args, load_detector(args, bases[c], device), bases[c], root / c, out / c)
               for c in classes}
    mean = mean_metrics(overall.values())
    print(f"\n{args.base_model_name or 'the newest pairs'} on {root}: {len(classes)} classes\n"
          f"{format_table({**overall, 'mean': mean}, row_label='class')}\n{format_mean_verdicts(mean)}")
    return {"classes": overall, "mean": mean}


def run(args):
    """Check the outputs, then evaluate every class of a root, or recalibrate and/or evaluate one pair."""
    if args.data_path is not None and not Path(args.data_path).is_dir():
        raise UsageError(f"--data_path {args.data_path} is not a folder")
    if args.data_path is not None:
        check_output_dir(args.output_path, "--output_path")
        read = (("--data_path", args.data_path), ("--recalibrate", args.recalibrate),
                ("--defect_path", args.defect_path))
        for flag, folder in read:  # pictures written there would join what is read
            if folder is not None:
                refuse_inside(args.output_path, folder, in_flag=flag)
    if args.recalibrate:  # the pair is rewritten: refused before any scoring when it cannot be
        check_output_dir(args.checkpoint_path, "--checkpoint_path")
    classes = None if args.data_path is None else class_names(args.data_path, args.obj_id)
    device = select_device(args.gpu_id)
    log.info("device: %s", device)
    summary = evaluate_all(args, device, classes) if classes is not None else evaluate_single(args, device)
    if args.json and summary is not None:
        print(json.dumps(json_safe(summary)))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    with ScriptExit("evaluate.py") as outcome:  # bad input: 2; a failed write: 1; a signal: 128 + n
        run(args)
    return outcome.code


def evaluate_single(args, device):
    """One pair: recalibrate (when asked), then evaluate --data_path (when given); its overall metrics or None."""
    base = args.base_model_name or class_pair(args.checkpoint_path, Path(args.data_path).name)
    if args.data_path is not None:
        check_outputs(args.output_path, find_pair(args.checkpoint_path, base),
                      args.data_path if args.save_images else None)
    detector = load_detector(args, base, device)
    if args.recalibrate:
        recalibrate(args, detector)
    if args.data_path is None:
        return None
    return evaluate_one(args, detector, base, args.data_path, args.output_path)


def class_pair(checkpoint_path, obj_name):
    """The newest complete pair of the class `obj_name`, else (a class folder named otherwise than at training)
    the newest complete pair in the folder, as detect.py takes it."""
    try:
        return newest_complete_pair(checkpoint_path, obj_name=obj_name)
    except UsageError:
        base = newest_complete_pair(checkpoint_path)
        log.warning("no pair of the class %s in %s: using the newest pair, %s", obj_name, checkpoint_path, base)
        return base


if __name__ == "__main__":
    sys.exit(main())
