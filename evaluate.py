"""Evaluate a trained checkpoint pair on a labelled MVTec-style class folder (test/<type>/*, ground_truth/...).

    python evaluate.py --data_path path/to/class --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path ./eval_results/ [--json] [--save_images]

Prints a table per defect type and overall (image AUROC/AP, pixel AUROC/AP, AUPRO up to FPR 0.3) and writes
metrics.csv and metrics.json to --output_path.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

from utils.evaluation import check_outputs, evaluate_class, json_safe, results_text, write_results
from utils.image_size import add_max_pixels_flag, set_max_pixels
from utils.inference import Detector
from utils.metrics import METRIC_NAMES
from utils.runtime import AMP_CHOICES, UsageError, positive_int, report_error, resolve_amp, select_device

log = logging.getLogger("evaluate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate DRAEM on a labelled MVTec-style class folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_path", required=True, help="class folder with test/<type>/* and ground_truth/<type>/*")
    p.add_argument("--base_model_name", required=True,
                   help="checkpoint pair name without extension, e.g. DRAEM_test_0.0001_700_bs8_bottle_")
    p.add_argument("--checkpoint_path", default="./checkpoints/", help="folder holding the pair")
    p.add_argument("--output_path", default="./eval_results/", help="folder for metrics.csv / metrics.json")
    p.add_argument("--gpu_id", type=int, default=0, help="CUDA device index (CPU when CUDA is absent)")
    p.add_argument("--bs", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--amp", choices=AMP_CHOICES, default="off", help="mixed precision")
    p.add_argument("--save_images", action="store_true", help="also write the 4-panel PNG of every test image")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the overall metrics")
    add_max_pixels_flag(p)
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    set_max_pixels(args.max_pixels)
    try:
        if not Path(args.data_path).is_dir():
            raise UsageError(f"--data_path {args.data_path} is not a folder")
        check_outputs(args.output_path)
        device = select_device(args.gpu_id)
        log.info("device: %s", device)
        detector = Detector.from_checkpoint(args.checkpoint_path, args.base_model_name, device,
                                            resolve_amp(args.amp, device))
        images_dir = Path(args.output_path) / "images" if args.save_images else None
        results = evaluate_class(detector, args.data_path, args.bs, images_dir)
        print(results_text(results, title=f"{args.base_model_name} on {args.data_path}"))
        write_results(results, args.output_path, {"base_model_name": args.base_model_name,
                                                  **detector.meta["config"]})
    except (UsageError, OSError, ValueError) as e:  # bad input: 2; a failed write (disk full ...): 1
        return report_error("evaluate.py", e)
    if args.json:
        print(json.dumps(json_safe({k: results["overall"][k] for k in METRIC_NAMES})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
