"""Run a trained DRAEM pair on an image (or a folder of images) and write the 4-panel picture.

    python detect.py                                   # newest demo model on a demo defect image
    python detect.py --image_path part.png --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path single_test_result.png
    python detect.py --image_path folder/ --base_model_name ... --output_path results/   # folder: PNGs + report.csv

Panels: Input (original), Reconstructed, Anomaly Map (raw), Result (overlay) with the score and OK/NG against
the threshold calibrated at training time (checkpoints without one, like the authors' release, say so).
"""
from utils.quiet_start import exit_quietly_on_signals

exit_quietly_on_signals("detect.py", __name__)  # a signal during the imports below: one line

import argparse
import contextlib
import csv
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from utils.checkpoint import newest_complete_pair
from utils.cli import (UsageError, add_inference_flags, add_max_pixels_flag, display_name, resolve_amp, run_script,
                       select_device)
from utils.data_loader import list_images
from utils.demo_data import DEMO_ROOT
from utils.detector import Detector
from utils.files import (atomic_open, check_output_dir, check_output_file, refuse_input_overwrite, refuse_inside,
                         tidy_output_folders)
from utils.visualize import save_panels

log = logging.getLogger("detect")
DEFAULT_OUTPUT = "single_test_result.png"
REPORT_HEADER = "file,picture,score,verdict"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Detect anomalies with a trained DRAEM checkpoint pair.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image_path", default=None,
                   help="an image, or a folder (scanned recursively); omit to use a demo defect image")
    p.add_argument("--output_path", default=DEFAULT_OUTPUT,
                   help="PNG to write; with a folder --image_path, a folder (default detect_results/)")
    add_inference_flags(p, bs_help="tiles per forward pass (a square image is one tile)",
                        pair_help="; omit to use the newest complete pair in --checkpoint_path")
    p.add_argument("--json", action="store_true", help="print one JSON line per image instead of text")
    p.add_argument("--export_onnx", default=None, metavar="PATH",
                   help="also export the detector (image -> anomaly map, score) to this ONNX file")
    add_max_pixels_flag(p)
    return p.parse_args(argv)


def resolve_inputs(args):
    """(image files, base model name, output, folder mode) with the demo defaults filled in."""
    if args.image_path is None:
        from utils.demo_data import DEMO_CLASS, demo_image_path
        image = demo_image_path(DEMO_ROOT)
        if not image.is_file():
            raise UsageError(f"demo image {image} not found; run `python train.py` first")
        base = args.base_model_name or newest_complete_pair(args.checkpoint_path, f"_{DEMO_CLASS}_")
        return [image], base, Path(args.output_path), False
    path = Path(args.image_path)
    base = args.base_model_name or newest_complete_pair(args.checkpoint_path)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise UsageError(f"--image_path {path}: no images in this folder")
        out = Path("detect_results" if args.output_path == DEFAULT_OUTPUT else args.output_path)
        return files, base, out, True
    if not path.is_file():
        raise UsageError(f"--image_path {path} does not exist")
    return [path], base, Path(args.output_path), False


def panel_args(image, out, i):
    return (image.permute(1, 2, 0).numpy(), out["reconstruction"][i].permute(1, 2, 0).cpu().numpy(),
            out["anomaly_map"][i].cpu().numpy(), float(out["score"][i]))


def picture_name(rel):
    """Folder mode: `sub/x.jpg` -> `sub/x.jpg.png`, so x.png and x.jpg give two pictures; an undecodable name
    gives its escaped form (`caf\\xe9.png.png`), which report.csv can name exactly."""
    return rel.with_name(display_name(rel.name) + ".png")


def check_outputs(files, root, output, folder_mode):
    """Before any work: the outputs can be written and replace no input."""
    if not folder_mode:
        refuse_input_overwrite([output], files)
        check_output_file(output, "--output_path")
        return
    check_output_dir(output, "--output_path")
    refuse_inside(output, root)
    check_output_file(output / "report.csv", "--output_path")


def report(path, score, threshold, verdict, as_json):
    name = display_name(path)
    if as_json:
        print(json.dumps({"file": name, "score": round(score, 6), "threshold": threshold, "verdict": verdict}))
    else:
        print(f"{name}: score {score:.4f}  {verdict}" + ("" if threshold is None else f" (threshold {threshold:.4f})"))


def detect_single(detector, path, output, as_json):
    image = detector.read(path)  # (3, H, W) at the checkpoint's working scale
    out = detector.predict([image])
    score = float(out["score"][0])
    verdict = detector.verdict(score)
    save_panels(output, *panel_args(image, out, 0), threshold=detector.threshold, title=display_name(Path(path).name))
    report(path, score, detector.threshold, verdict, as_json)
    return [(str(path), str(output), score, verdict)]


def detect_folder(detector, files, root, output, as_json, stop):
    """Score every file in batches (`Detector.batches`) with the model loaded once; one PNG each, then report.csv.

    However it ends (a failed write, Ctrl-C / SIGTERM: `stop` ends it after the current batch), report.csv lists
    the pictures written. No readable image at all: UsageError, nothing written.
    """
    tidy_output_folders({(output / picture_name(f.relative_to(root))).parent for f in files})
    rows, stop.armed = [], True
    try:
        for group in tqdm(detector.batches(files), desc="detect", disable=as_json):
            rows += detect_batch(detector, group, root, output, as_json)
            if stop.requested:
                raise stop.interrupted(f"report.csv lists the {len(rows)} of {len(files)} images done")
    except BaseException:
        with contextlib.suppress(OSError):
            write_csv(output / "report.csv", rows)
        raise
    finally:
        stop.armed = False
    if not rows:
        raise UsageError(f"--image_path {display_name(root)}: none of its {len(files)} images could be read "
                         f"(warnings above)")
    write_csv(output / "report.csv", rows)
    if len(rows) < len(files):
        log.warning("%d of %d images inspected, %d unreadable (warnings above)", len(rows), len(files),
                    len(files) - len(rows))
    return rows


def detect_batch(detector, group, root, output, as_json):
    """(file, image) pairs -> one picture and report row each."""
    rows = []
    out = detector.predict([image for _, image in group])
    for j, (f, image) in enumerate(group):
        score = float(out["score"][j])
        rel = f.relative_to(root)
        save_panels(output / picture_name(rel), *panel_args(image, out, j), threshold=detector.threshold,
                    title=display_name(rel))
        rows.append((display_name(rel), str(picture_name(rel)), score, detector.verdict(score)))
        report(rel, score, detector.threshold, rows[-1][3], as_json)
    return rows


def write_csv(path, rows):
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(REPORT_HEADER.split(","))
        w.writerows((r[0], r[1], f"{r[2]:.6f}", r[3]) for r in rows)


def run(args, stop):
    """Check the outputs, load the pair once, score the image or the folder, write the pictures (and report)."""
    files, base, output, folder_mode = resolve_inputs(args)
    check_outputs(files, args.image_path, output, folder_mode)
    if args.export_onnx:
        refuse_input_overwrite([args.export_onnx], files, "--export_onnx")
        check_output_file(args.export_onnx, "--export_onnx")
    device = select_device(args.gpu_id)
    detector = Detector.from_checkpoint(args.checkpoint_path, base, device, resolve_amp(args.amp, device),
                                        bs=args.bs, max_pixels=args.max_pixels)
    log.info("device: %s, model: %s (%d px, scale %s%s)", device, base, detector.size, detector.scale,
             "" if detector.threshold is not None else ", no calibrated threshold")
    if args.export_onnx:
        from utils.export import export_onnx
        export_onnx(detector, args.export_onnx)
    if folder_mode:
        detect_folder(detector, files, Path(args.image_path), output, args.json, stop)
    else:
        tidy_output_folders([output.parent])
        detect_single(detector, files[0], output, args.json)
    if not args.json:
        log.info("wrote %s", display_name(output))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    return run_script("detect.py", lambda stop: run(args, stop))  # bad input: 2; a failed write: 1; a signal


if __name__ == "__main__":
    sys.exit(main())
