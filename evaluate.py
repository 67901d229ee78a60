"""Evaluate a trained checkpoint pair on a labelled MVTec-style class folder (test/<type>/*, ground_truth/...).

    python evaluate.py --data_path path/to/class --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path ./eval_results/ [--json] [--save_images]

Prints a table per defect type and overall (image AUROC/AP, pixel AUROC/AP, AUPRO up to FPR 0.3) and writes
metrics.csv and metrics.json to --output_path.
"""
import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.data_loader import MVTecTestDataset
from utils.inference import Detector
from utils.metrics import format_table, per_type_metrics
from utils.runtime import UsageError, resolve_amp, select_device
from utils.tiling import SQUARE

log = logging.getLogger("evaluate")
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate DRAEM on a labelled MVTec-style class folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_path", required=True, help="class folder with test/<type>/* and ground_truth/<type>/*")
    p.add_argument("--base_model_name", required=True,
                   help="checkpoint pair name without extension, e.g. DRAEM_test_0.0001_700_bs8_bottle_")
    p.add_argument("--checkpoint_path", default="./checkpoints/", help="folder holding the pair")
    p.add_argument("--output_path", default="./eval_results/", help="folder for metrics.csv / metrics.json")
    p.add_argument("--gpu_id", type=int, default=0, help="CUDA device index (CPU when CUDA is absent)")
    p.add_argument("--bs", type=int, default=8, help="images per forward pass")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="off", help="mixed precision")
    p.add_argument("--save_images", action="store_true", help="also write the 4-panel PNG of every test image")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the overall metrics")
    args = p.parse_args(argv)
    if args.bs <= 0:
        p.error(f"argument --bs: must be positive, got {args.bs}")
    return args


def collate(batch):
    """Lists, not stacks: at a tiled working scale (--scale native / N) the images differ in size."""
    return {k: [b[k] for b in batch] for k in ("image", "mask", "label", "type", "path")}


def evaluate_class(detector, class_dir, bs=8, save_images_dir=None, workers=0):
    """Score every test image; returns {type: {metric: value}, ..., "overall": {...}}.

    Maps and masks are compared at the checkpoint's working scale (masks resized by nearest neighbour).
    """
    ds = MVTecTestDataset(class_dir, detector.size, detector.scale)
    # tiled scales: one image at a time, so memory is bounded by one image (plus the maps kept for the metrics)
    loader = DataLoader(ds, batch_size=bs if detector.scale == SQUARE else 1, num_workers=workers,
                        collate_fn=collate)
    labels, scores, masks, maps, types = [], [], [], [], []
    for batch in tqdm(loader, desc="evaluate", leave=False):
        out = detector.predict_batch(batch["image"], with_reconstruction=save_images_dir is not None)
        scores += [float(s) for s in out["score"]]
        maps += [m.cpu().numpy().astype(np.float32) for m in out["anomaly_map"]]  # (H, W) each
        masks += [m[0].numpy().astype(np.uint8) for m in batch["mask"]]
        labels += batch["label"]
        types += batch["type"]
        if save_images_dir is not None:
            save_batch_panels(detector, batch, out, Path(save_images_dir))
    return per_type_metrics(np.array(types), np.array(labels), np.array(scores), masks, maps)


def save_batch_panels(detector, batch, out, folder):
    from utils.visualize import save_panels
    for i, path in enumerate(batch["path"]):
        p = Path(path)
        save_panels(folder / p.parent.name / f"{p.stem}.png", batch["image"][i].permute(1, 2, 0).numpy(),
                    out["reconstruction"][i].permute(1, 2, 0).cpu().numpy(), out["anomaly_map"][i].cpu().numpy(),
                    float(out["score"][i]), threshold=detector.threshold, title=p.name)


def print_results(results, title=""):
    print(f"\n{title}" if title else "")
    print(format_table(results))


def json_safe(results):
    """nan -> None: strict JSON has no NaN (a metric is undefined when a split lacks one class)."""
    return {k: (json_safe(v) if isinstance(v, dict) else (None if v != v else v)) for k, v in results.items()}


def write_results(results, folder, meta):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["type", *METRICS])
        for name, m in results.items():
            w.writerow([name, *(f"{m[k]:.4f}" for k in METRICS)])
    (folder / "metrics.json").write_text(json.dumps({"results": json_safe(results), "checkpoint": meta}, indent=2))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        if not Path(args.data_path).is_dir():
            raise UsageError(f"--data_path {args.data_path} is not a folder")
        device = select_device(args.gpu_id)
        log.info("device: %s", device)
        detector = Detector.from_checkpoint(args.checkpoint_path, args.base_model_name, device,
                                            resolve_amp(args.amp, device))
        images_dir = Path(args.output_path) / "images" if args.save_images else None
        results = evaluate_class(detector, args.data_path, args.bs, images_dir)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    print_results(results, title=f"{args.base_model_name} on {args.data_path}")
    write_results(results, args.output_path, {"base_model_name": args.base_model_name, **detector.meta["config"]})
    if args.json:
        print(json.dumps(json_safe({k: results["overall"][k] for k in METRICS})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
