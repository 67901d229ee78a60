"""Scoring a labelled test split (evaluate.py): maps and scores of every image, the metrics per defect type, the
verdicts at the stored threshold, the pictures and the results page, and the metrics files."""
import csv
import json
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from utils.data_loader import MVTecTestDataset, list_test_images
from utils.evaluation.metrics import METRIC_NAMES, compute_all, drop_pixel_metrics, format_table, per_type_metrics
from utils.evaluation.thresholds import _scores, verdict_metrics
from utils.images.reading import NATIVE, read_image
from utils.images.tiles import HALVES
from utils.outputs.page import PAGE_NAME, thumb_path, write_scored_image
from utils.outputs.picture import at_image_pixels
from utils.runtime import display_name, progress
from utils.storage.atomic import atomic_open, atomic_write_bytes
from utils.storage.output_rules import check_output_dir, check_output_file, refuse_input_overwrite

VERDICTS = ("threshold", "false_reject_rate", "defect_recall", "best_recall_at_same_frr")  # overall, in --json


HALF_ROWS = {"draem": "DRAEM alone", "novelty": "novelty alone", "fused": "fused (the pair)"}


def evaluate_class(detector, class_dir, save_images_dir=None, workers=0, page=None):
    """Score every test image; returns {type: {metric: value}, ..., "overall": {...}}, with the verdicts at the
    detector's threshold among the metrics (`add_verdicts`). For a pair with a feature prior, "overall" also holds
    "halves": the overall metrics of DRAEM's map alone, the novelty's alone and the fused map, from the same pass
    (`HALF_ROWS`).

    Maps and masks are compared at the checkpoint's working scale (masks resized by nearest neighbour).
    save_images_dir: also write the 4-panel picture of each image there (<type>/<name>.png) and its overlay
    thumbnail beside that folder (thumbs/<type>/<name>.jpg); `page` (a list) then gets one PageRow per image.
    """
    ds = MVTecTestDataset(class_dir, detector.size, detector.scale, detector.max_pixels)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)  # one sample at a time, decoded by workers
    labels, scores, masks, maps, types = [], [], [], [], []
    halves = {half: ([], []) for half in HALVES} if detector.has_halves else {}  # half: (scores, maps)
    for group in progress(detector.batches(loader, read=lambda r: r, image_of=lambda r: r["image"]),
                          desc="evaluate", leave=False):
        batch = {k: [r[k] for _, r in group] for k in ("image", "mask", "label", "type", "path")}
        out = detector.predict(batch["image"], with_reconstruction=save_images_dir is not None, halves=bool(halves))
        scores += [float(s) for s in out["score"]]
        maps += [m.cpu().numpy().astype(np.float32) for m in out["anomaly_map"]]  # (H, W) each
        for half, (half_scores, half_maps) in halves.items():
            half_scores += [float(s) for s in out[f"{half}_score"]]
            half_maps += [m.cpu().numpy().astype(np.float32) for m in out[f"{half}_map"]]
        masks += [m[0].numpy().astype(np.uint8) for m in batch["mask"]]
        labels += batch["label"]
        types += batch["type"]
        if save_images_dir is not None:
            rows = save_batch_panels(detector, batch, out, Path(save_images_dir))
            if page is not None:
                page.extend(rows)
    scores = np.array(scores)  # (N,)
    results = per_type_metrics(np.array(types), np.array(labels), scores, masks, maps)
    if halves:
        rows = {half: compute_all(labels, np.array(s), masks, m) for half, (s, m) in halves.items()}
        rows["fused"] = {k: results["overall"][k] for k in METRIC_NAMES}
        results["overall"]["halves"] = rows
    results = drop_pixel_metrics(results, ds.types_without_masks)
    return add_verdicts(results, types, labels, scores, detector.threshold)


def halves_text(results):
    """The three rows of a pair with a prior (DRAEM alone, the novelty alone, the fused map), or ""."""
    rows = results["overall"].get("halves")
    if not rows:
        return ""
    table = format_table({HALF_ROWS[k]: v for k, v in rows.items()}, row_label="each half, overall")
    return f"{table}\n"


def panel_name(image_path):
    """How a test image is named on the results page and under thumbs/: <type>/<file name>."""
    return f"{image_path.parent.name}/{image_path.name}"


def panel_path(folder, image_path):
    """Where the 4-panel picture of a test image goes: <folder>/<type>/<file name>.png."""
    return folder / image_path.parent.name / f"{image_path.name}.png"


def save_batch_panels(detector, batch, out, folder):
    """The 4-panel picture and overlay thumbnail of each image of a batch; returns their PageRows."""
    rows = []
    for i, path in enumerate(batch["path"]):
        p = Path(path)
        name, picture = panel_name(p), panel_path(folder, p)
        original = read_image(p, None, NATIVE, detector.max_pixels).permute(1, 2, 0).numpy()  # (H, W, 3)
        panels = at_image_pixels(original, out["reconstruction"][i].permute(1, 2, 0).cpu().numpy(),
                                 out["anomaly_map"][i].cpu().numpy())  # the outline at the file's own pixels
        rows.append(write_scored_image(picture, *panels, float(out["score"][i]), detector.threshold,
                                       display_name(p.name), folder.parent, name, p.parent.name,
                                       "defect" if batch["label"][i] else "good",
                                       reconstruction_note=detector.reconstruction_note,
                                       scale_note=detector.map_scale_note))
    return rows


def results_text(results, title=""):
    """The results table under a title line (blank when there is no title), then the verdicts."""
    table = f"\n{title}\n{format_table(results)}" if title else f"\n{format_table(results)}"
    return f"{table}\n{halves_text(results)}{format_verdicts(results)}"


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
        for half, m in results["overall"].get("halves", {}).items():  # the three rows: metrics, no verdicts
            w.writerow([f"{half} (overall)", *(_cell(m.get(k)) for k in columns)])
    text = json.dumps({"results": json_safe(results), "checkpoint": meta}, indent=2)
    atomic_write_bytes(folder / "metrics.json", text.encode("utf-8"))


def check_outputs(output_path, pair, pictures_of=None):
    """Before any work: a writable folder (checked, nothing created) whose files replace neither file of the
    checkpoint pair being read. pictures_of: the class folder whose test images get pictures (--save_images)."""
    folder = Path(output_path)
    outputs = [folder / "metrics.csv", folder / "metrics.json", folder / PAGE_NAME]
    if pictures_of is not None and (Path(pictures_of) / "test").is_dir():
        for _, f in list_test_images(Path(pictures_of) / "test"):
            outputs += [panel_path(folder / "images", f), thumb_path(folder, panel_name(f))]
    refuse_input_overwrite(outputs, {"--checkpoint_path": pair})
    check_output_dir(output_path, "--output_path")
    check_output_file(folder / "metrics.csv", "--output_path")
    check_output_file(folder / "metrics.json", "--output_path")


def add_verdicts(results, types, labels, scores, threshold):
    """Add verdict_metrics at `threshold` to per-type `results` (utils.evaluation.metrics.per_type_metrics) in place.

    Each defect type is judged with all good images, as its other metrics are; "overall" with every image.
    """
    types, labels, scores = np.asarray(types), _scores(labels), _scores(scores)
    good = types == "good"
    for name in results:
        keep = np.ones(len(types), bool) if name == "overall" else good | (types == name)  # (N,)
        results[name].update(verdict_metrics(labels[keep], scores[keep], threshold))
    return results


def format_verdicts(results):
    """Text table of the verdicts in `results` (see add_verdicts): NG counts, false rejects and recall per type."""
    overall = results["overall"]
    if overall.get("threshold") is None:
        return "verdicts: the checkpoint has no threshold (recalibrate it: evaluate.py --recalibrate GOOD_DIR)"
    lines = [f"verdicts at the stored threshold {overall['threshold']:.4f} (NG when score > threshold):",
             f"  good images called NG: {overall['n_false_reject']} of {overall['n_good']} "
             f"(false-reject rate {overall['false_reject_rate']:.1%})",
             f"  {'type':<12} {'caught':>10} {'recall':>7}  best recall at the same false-reject rate (info)"]
    for name, m in results.items():
        if m.get("n_defect"):
            lines.append(f"  {name:<12} {m['n_caught']:>4} of {m['n_defect']:<3} {m['defect_recall']:>7.1%}  "
                         f"{m['best_recall_at_same_frr']:.1%}")
    return "\n".join(lines)
