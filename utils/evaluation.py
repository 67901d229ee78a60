"""Scoring a labelled MVTec-style test split: per-type metrics and OK/NG verdicts, their table, the metrics files.

Used by evaluate.py and by train.py's built-in demo:
    results = evaluate_class(Detector.from_checkpoint(...), "path/to/class")   # {type: {metric: value}}
    print(results_text(results, "title"))
"""
import csv
import json
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.atomic import atomic_open, atomic_write_bytes
from utils.calibration import add_verdicts, format_verdicts
from utils.data_loader import MVTecTestDataset
from utils.metrics import METRIC_NAMES, drop_pixel_metrics, format_table, per_type_metrics
from utils.outputs import check_output_dir, check_output_file, json_with_keys, text_starts_with
from utils.tiling import SQUARE
from utils.visualize import save_panels

VERDICTS = ("threshold", "false_reject_rate", "defect_recall", "best_recall_at_same_frr")  # overall, in --json
CSV_HEADERS = tuple(",".join(c) for c in (("type", *METRIC_NAMES, *VERDICTS), ("type", *METRIC_NAMES)))  # now, before


def collate(batch):
    """Lists, not stacks: at a tiled working scale (--scale native / N) the images differ in size."""
    return {k: [b[k] for b in batch] for k in ("image", "mask", "label", "type", "path")}


def evaluate_class(detector, class_dir, bs=8, save_images_dir=None, workers=0):
    """Score every test image; returns {type: {metric: value}, ..., "overall": {...}}, with the verdicts at the
    detector's threshold among the metrics (utils/calibration.py add_verdicts).

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
    scores = np.array(scores)  # (N,)
    results = per_type_metrics(np.array(types), np.array(labels), scores, masks, maps)
    results = drop_pixel_metrics(results, ds.types_without_masks)
    return add_verdicts(results, types, labels, scores, detector.threshold)


def save_batch_panels(detector, batch, out, folder):
    for i, path in enumerate(batch["path"]):
        p = Path(path)
        save_panels(folder / p.parent.name / f"{p.name}.png", batch["image"][i].permute(1, 2, 0).numpy(),
                    out["reconstruction"][i].permute(1, 2, 0).cpu().numpy(), out["anomaly_map"][i].cpu().numpy(),
                    float(out["score"][i]), threshold=detector.threshold, title=p.name)


def results_text(results, title=""):
    """The results table under a title line (blank when there is no title), then the verdicts."""
    table = f"\n{title}\n{format_table(results)}" if title else f"\n{format_table(results)}"
    return f"{table}\n{format_verdicts(results)}"


def json_safe(results):
    """nan -> None: strict JSON has no NaN (a metric is undefined when a split lacks one class)."""
    return {k: (json_safe(v) if isinstance(v, dict) else (None if v != v else v)) for k, v in results.items()}


def _cell(value):
    """A metric for the CSV: 4 decimals; empty when not available (None) or undefined (nan)."""
    return "" if value is None or value != value else f"{value:.4f}"


def write_results(results, folder, meta):
    """metrics.csv (a row per type) and metrics.json (results + the checkpoint's config) in `folder`, atomically."""
    folder = Path(folder)
    columns = (*METRIC_NAMES, *VERDICTS)
    with atomic_open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["type", *columns])
        for name, m in results.items():
            w.writerow([name, *(_cell(m.get(k)) for k in columns)])
    text = json.dumps({"results": json_safe(results), "checkpoint": meta}, indent=2)
    atomic_write_bytes(folder / "metrics.json", text.encode("utf-8"))


def check_outputs(output_path):
    """Before any work: a writable folder whose metrics files, if any, are ours (checked, nothing created)."""
    check_output_dir(output_path, "--output_path")
    check_output_file(Path(output_path) / "metrics.csv", "--output_path", text_starts_with(*CSV_HEADERS))
    check_output_file(Path(output_path) / "metrics.json", "--output_path", json_with_keys(("results", "checkpoint")))
