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
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.atomic import atomic_open, atomic_write_bytes
from utils.data_loader import MVTecTestDataset
from utils.image_size import DEFAULT_MAX_PIXELS, set_max_pixels
from utils.inference import Detector
from utils.metrics import drop_pixel_metrics, format_table, per_type_metrics
from utils.outputs import check_output_dir, check_output_file, json_with_keys, text_starts_with
from utils.runtime import UsageError, positive_int, resolve_amp, select_device

log = logging.getLogger("evaluate")
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
CSV_HEADER = ",".join(("type", *METRICS))


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
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="off", help="mixed precision")
    p.add_argument("--save_images", action="store_true", help="also write the 4-panel PNG of every test image")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the overall metrics")
    p.add_argument("--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (read from the header, before decoding)")
    return p.parse_args(argv)


def collate(batch):
    return {"image": torch.stack([b["image"] for b in batch]), "mask": torch.stack([b["mask"] for b in batch]),
            "label": [b["label"] for b in batch], "type": [b["type"] for b in batch],
            "path": [b["path"] for b in batch]}


def evaluate_class(detector, class_dir, bs=8, save_images_dir=None, workers=0):
    """Score every test image; returns {type: {metric: value}, ..., "overall": {...}}."""
    ds = MVTecTestDataset(class_dir, detector.size)
    loader = DataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=collate)
    labels, scores, masks, maps, types = [], [], [], [], []
    for batch in tqdm(loader, desc="evaluate", leave=False):
        out = detector(batch["image"])
        scores.append(out["score"].cpu().numpy())
        maps.append(out["anomaly_map"].cpu().numpy().astype(np.float32))
        masks.append(batch["mask"][:, 0].numpy().astype(np.uint8))
        labels += batch["label"]
        types += batch["type"]
        if save_images_dir is not None:
            save_batch_panels(detector, batch, out, Path(save_images_dir))
    results = per_type_metrics(np.array(types), np.array(labels), np.concatenate(scores), np.concatenate(masks),
                               np.concatenate(maps))
    return drop_pixel_metrics(results, ds.types_without_masks)


def save_batch_panels(detector, batch, out, folder):
    from utils.visualize import save_panels
    for i, path in enumerate(batch["path"]):
        p = Path(path)
        save_panels(folder / p.parent.name / f"{p.name}.png", batch["image"][i].permute(1, 2, 0).numpy(),
                    out["reconstruction"][i].permute(1, 2, 0).cpu().numpy(), out["anomaly_map"][i].cpu().numpy(),
                    float(out["score"][i]), threshold=detector.threshold, title=p.name)


def print_results(results, title=""):
    print(f"\n{title}" if title else "")
    print(format_table(results))


def json_safe(results):
    """nan -> None: strict JSON has no NaN (a metric is undefined when a split lacks one class)."""
    return {k: (json_safe(v) if isinstance(v, dict) else (None if v != v else v)) for k, v in results.items()}


def _cell(value):
    """A metric for the CSV: 4 decimals; empty when not available (None) or undefined (nan)."""
    return "" if value is None or value != value else f"{value:.4f}"


def write_results(results, folder, meta):
    folder = Path(folder)
    with atomic_open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["type", *METRICS])
        for name, m in results.items():
            w.writerow([name, *(_cell(m[k]) for k in METRICS)])
    text = json.dumps({"results": json_safe(results), "checkpoint": meta}, indent=2)
    atomic_write_bytes(folder / "metrics.json", text.encode("utf-8"))


def check_outputs(output_path):
    """Before any work: a writable folder whose metrics files, if any, are ours."""
    check_output_dir(output_path, "--output_path")
    check_output_file(Path(output_path) / "metrics.csv", "--output_path", text_starts_with(CSV_HEADER))
    check_output_file(Path(output_path) / "metrics.json", "--output_path", json_with_keys(("results", "checkpoint")))


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
        print_results(results, title=f"{args.base_model_name} on {args.data_path}")
        write_results(results, args.output_path, {"base_model_name": args.base_model_name,
                                                  **detector.meta["config"]})
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing failed: disk full, file-size limit, permissions
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(json_safe({k: results["overall"][k] for k in METRICS})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
