"""Run a trained DRAEM pair on an image (or a folder of images) and write the 4-panel picture.

    python detect.py                                   # newest demo model on a demo defect image
    python detect.py --image_path part.png --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path single_test_result.png
    python detect.py --image_path folder/ --base_model_name ... --output_path results/   # folder: PNGs + report.csv

Panels: Input (original), Reconstructed, Anomaly Map (raw), Result (overlay) with the score and OK/NG against
the threshold calibrated at training time (checkpoints without one, like the authors' release, say so).
"""
import argparse
import contextlib
import csv
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from utils.atomic import atomic_open
from utils.checkpoint import newest_complete_pair
from utils.data_loader import list_images
from utils.demo_data import DEMO_ROOT
from utils.image_size import add_max_pixels_flag, set_max_pixels
from utils.inference import Detector
from utils.outputs import (check_output_dir, check_output_file, png_is_ours, refuse_foreign, refuse_input_overwrite,
                           text_starts_with)
from utils.runtime import UsageError, add_inference_flags, report_error, resolve_amp, select_device
from utils.tiling import SQUARE
from utils.visualize import save_panels

log = logging.getLogger("detect")
DEFAULT_OUTPUT = "single_test_result.png"
REPORT_HEADER = "file,picture,score,verdict"
OLD_REPORT_HEADER = "file,score,verdict"  # report.csv of earlier versions: ours too


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Detect anomalies with a trained DRAEM checkpoint pair.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image_path", default=None,
                   help="an image, or a folder (scanned recursively); omit to use a demo defect image")
    p.add_argument("--output_path", default=DEFAULT_OUTPUT,
                   help="PNG to write; with a folder --image_path, a folder (default detect_results/)")
    add_inference_flags(p, bs_help="images per forward pass in folder mode",
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
    """Folder mode: `sub/x.jpg` -> `sub/x.jpg.png`, so x.png and x.jpg give two pictures."""
    return rel.with_name(rel.name + ".png")


def check_outputs(files, root, output, folder_mode):
    """Before any work: the outputs can be written and replace no input and no file we did not write."""
    if not folder_mode:
        refuse_input_overwrite([output], files)
        check_output_file(output, "--output_path", png_is_ours)
        return
    check_output_dir(output, "--output_path")
    out, src = Path(output).resolve(), Path(root).resolve()
    if out == src or src in out.parents:
        raise UsageError(f"--output_path {output} is inside the input folder --image_path {root}: its pictures "
                         f"would replace or join the inputs; choose a folder outside it")
    pictures = [output / picture_name(f.relative_to(root)) for f in files]
    refuse_input_overwrite(pictures, files)
    for path in pictures:
        refuse_foreign(path, "--output_path", png_is_ours)
    check_output_file(output / "report.csv", "--output_path",
                      text_starts_with(REPORT_HEADER, OLD_REPORT_HEADER))


def report(path, score, threshold, verdict, as_json):
    if as_json:
        print(json.dumps({"file": str(path), "score": round(score, 6), "threshold": threshold, "verdict": verdict}))
    else:
        print(f"{path}: score {score:.4f}  {verdict}" + ("" if threshold is None else f" (threshold {threshold:.4f})"))


def detect_single(detector, path, output, as_json):
    image = detector.read(path)  # (3, H, W) at the checkpoint's working scale
    out = detector.predict_batch([image])
    score = float(out["score"][0])
    verdict = detector.verdict(score)
    save_panels(output, *panel_args(image, out, 0), threshold=detector.threshold, title=Path(path).name)
    report(path, score, detector.threshold, verdict, as_json)
    return [(str(path), str(output), score, verdict)]


def detect_folder(detector, files, root, output, bs, as_json):
    """Score every file in batches with the model loaded once; one PNG each, then report.csv.

    When a write fails (disk full ...), report.csv still lists the pictures written before the error.
    """
    rows = []
    try:
        for i in tqdm(range(0, len(files), bs), desc="detect", disable=as_json):
            rows += detect_batch(detector, files[i:i + bs], root, output, as_json)
    except OSError:
        with contextlib.suppress(OSError):
            write_csv(output / "report.csv", rows)
        raise
    write_csv(output / "report.csv", rows)
    return rows


def detect_batch(detector, batch_files, root, output, as_json):
    chunk, images, rows = [], [], []
    for f in batch_files:
        try:
            images.append(detector.read(f))
            chunk.append(f)
        except ValueError as e:
            log.warning("skipping %s", e)
    if not chunk:
        return rows
    out = detector.predict_batch(images)
    for j, f in enumerate(chunk):
        score = float(out["score"][j])
        rel = f.relative_to(root)
        save_panels(output / picture_name(rel), *panel_args(images[j], out, j), threshold=detector.threshold,
                    title=str(rel))
        rows.append((str(rel), str(picture_name(rel)), score, detector.verdict(score)))
        report(rel, score, detector.threshold, rows[-1][3], as_json)
    return rows


def write_csv(path, rows):
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(REPORT_HEADER.split(","))
        w.writerows((r[0], r[1], f"{r[2]:.6f}", r[3]) for r in rows)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    set_max_pixels(args.max_pixels)
    try:
        files, base, output, folder_mode = resolve_inputs(args)
        check_outputs(files, args.image_path, output, folder_mode)
        if args.export_onnx:
            check_output_file(args.export_onnx, "--export_onnx", onnx_is_ours)
        device = select_device(args.gpu_id)
        detector = Detector.from_checkpoint(args.checkpoint_path, base, device, resolve_amp(args.amp, device))
        log.info("device: %s, model: %s (%d px, scale %s%s)", device, base, detector.size, detector.scale,
                 "" if detector.threshold is not None else ", no calibrated threshold")
        if args.export_onnx:
            from utils.onnx_export import export_onnx
            export_onnx(detector, args.export_onnx)
        if folder_mode:
            # tiled: one image at a time, so memory stays bounded by one image and the tile batch
            bs = args.bs if detector.scale == SQUARE else 1
            detect_folder(detector, files, Path(args.image_path), output, bs, args.json)
        else:
            detect_single(detector, files[0], output, args.json)
    except (UsageError, OSError, ValueError) as e:  # bad input: 2; a failed write (disk full ...): 1
        return report_error("detect.py", e)
    if not args.json:
        log.info("wrote %s", output)
    return 0


def onnx_is_ours(path):
    """An ONNX file exported by PyTorch (its header names the producer) may be replaced."""
    try:
        with open(path, "rb") as f:
            return b"pytorch" in f.read(64)
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
