"""Run a trained DRAEM pair on an image (or a folder of images) and write the 4-panel picture.

    python detect.py                                   # newest demo model on a demo defect image
    python detect.py --image_path part.png --base_model_name DRAEM_test_0.0001_700_bs8_bottle_ \
        --checkpoint_path ./checkpoints/ --output_path single_test_result.png
    python detect.py --image_path folder/ --base_model_name ... --output_path results/   # folder: PNGs + report.csv
    python detect.py --image_path folder/ ... --save_maps   # + per image: x.jpg.map.png, .mask.png, .overlay.png

Panels: Input (original), Reconstructed, Anomaly Map (raw), Result (overlay) with the score and OK/NG against
the threshold calibrated at training time (checkpoints without one, like the authors' release, say so).
Folder mode also writes index.html, the results page (utils/outputs/page.py), with an overlay thumbnail per
image under thumbs/. --save_maps adds, beside each picture, the raw anomaly map (16-bit PNG at the input's size),
the defect mask at the stored threshold (0/255) and the overlay alone (utils/outputs/maps.py).
"""
from utils.cli import ScriptExit, add_inference_flags, add_max_pixels_flag, exit_quietly_on_signals
from utils.runtime import UsageError, display_name, progress, resolve_amp, select_device

exit_quietly_on_signals("detect.py", __name__)  # a signal during the imports below: one line

import argparse
import contextlib
import csv
import json
import logging
import sys
from pathlib import Path

from utils.data_loader import list_images
from utils.images.reading import NATIVE, describe_scale, read_image, special_file_kind
from utils.inference.detector import Detector
from utils.outputs.maps import MAP_FILES, map_output_paths, save_map_outputs
from utils.outputs.picture import at_image_pixels
from utils.outputs.page import PAGE_NAME, thumb_path, write_results_page, write_scored_image
from utils.storage.atomic import atomic_open, tidy_output_folders
from utils.storage.output_rules import check_output_dir, check_output_file, refuse_input_overwrite, refuse_inside
from utils.storage.pairs import find_pair, newest_complete_pair
from utils.synthesis.demo_data import DEMO_ROOT

log = logging.getLogger("detect")
DEFAULT_OUTPUT = "single_test_result.png"
REPORT_HEADER = "file,picture,score,verdict,pair"


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
    p.add_argument("--save_maps", action="store_true",
                   help="also write per image, beside its picture, the anomaly map (16-bit PNG, 0..65535 for 0..1, "
                        "at the input's size), the defect mask at the stored threshold (0/255 PNG) and the overlay "
                        "alone: x.jpg.map.png, x.jpg.mask.png, x.jpg.overlay.png; report.csv and --json name them")
    p.add_argument("--export_onnx", default=None, metavar="PATH",
                   help="also export the detector (image -> anomaly map, score) to this ONNX file")
    add_max_pixels_flag(p)
    return p.parse_args(argv)


def resolve_inputs(args):
    """(image files, base model name, output, folder mode) with the demo defaults filled in."""
    if args.image_path is None:
        from utils.synthesis.demo_data import DEMO_CLASS, demo_image_path
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
    if special_file_kind(path) is not None:  # never opened: a FIFO would block, /dev/zero never end
        raise UsageError(f"--image_path {path} is {special_file_kind(path)}, not an image file")
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


def planned_outputs(files, root, output, folder_mode, save_maps):
    """Every file this run may write: the picture and its maps (save_maps); in folder mode report.csv and the
    results page first, then each image's picture, thumbnail (and maps)."""
    if not folder_mode:
        return [output, *(map_output_paths(output).values() if save_maps else ())]
    outs = [output / "report.csv", output / PAGE_NAME]
    for f in files:
        picture = output / picture_name(f.relative_to(root))
        outs += [picture, thumb_path(output, display_name(f.relative_to(root)))]
        outs += map_output_paths(picture).values() if save_maps else []
    return outs


def check_outputs(args, files, output, folder_mode, pair):
    """Before any work: the outputs can be written and replace no input (an image, either file of the pair)."""
    inputs = {"--image_path": files, "--checkpoint_path": pair}
    root = Path(args.image_path) if folder_mode else None
    if folder_mode:
        check_output_dir(output, "--output_path")
        refuse_inside(output, root)
    outputs = planned_outputs(files, root, output, folder_mode, args.save_maps)
    refuse_input_overwrite(outputs, inputs)
    for path in outputs[:2] if folder_mode else outputs:  # report.csv and the page, or the picture and its maps
        check_output_file(path, "--output_path")
    if args.export_onnx:
        refuse_input_overwrite([args.export_onnx], inputs, "--export_onnx")
        check_output_file(args.export_onnx, "--export_onnx")


def report(row, threshold, as_json, teaching=0):
    """One line per image: text, or a JSON object naming the files written for it and the pair that scored it."""
    if as_json:
        files = {k: row[k] for k in ("picture", *MAP_FILES) if k in row}
        print(json.dumps({"file": row["file"], "score": round(row["score"], 6), "threshold": threshold,
                          "verdict": row["verdict"], **files, "pair": row["pair"], "teaching": teaching}))
    else:
        print(f"{row['file']}: score {row['score']:.4f}  {row['verdict']}"
              + ("" if threshold is None else f" (threshold {threshold:.4f})"))


def image_outputs(detector, path, picture, folder, title, pred, save_maps, page_name=None):
    """Write the 4-panel picture `folder / picture` of pred = (image, predict's output, index) (with page_name its
    thumbnail for the results page, and with save_maps the map, mask and overlay); returns (its report row: file,
    picture, score, verdict (and map, mask, overlay), the names relative to `folder`; its PageRow or None)."""
    image, out, j = pred
    score = float(out["score"][j])
    original = read_image(path, None, NATIVE, detector.max_pixels).permute(1, 2, 0).numpy()  # (H, W, 3)
    panels = at_image_pixels(original, *panel_args(image, out, j)[1:3])  # the outline at the file's own pixels
    page_row = write_scored_image(folder / picture, *panels, score, detector.threshold,
                                  f"{title}  ·  {detector.pair_label()}", folder if page_name else None, page_name,
                                  reconstruction_note=detector.reconstruction_note,
                                  scale_note=detector.map_scale_note)
    row = {"file": display_name(path), "picture": str(picture), "score": score, "verdict": detector.verdict(score),
           "pair": detector.name}
    if save_maps:
        written = save_map_outputs(folder / picture, original, out["anomaly_map"][j].cpu().numpy(),
                                   detector.threshold)
        named = {k: "" if p is None else str(p.relative_to(folder) if folder.parts else p) for k, p in written.items()}
        row.update(named)
    return row, page_row


def detect_single(detector, path, output, as_json, save_maps):
    image = detector.read(path)  # (3, H, W) at the checkpoint's working scale
    out = detector.predict([image])
    row, _ = image_outputs(detector, path, output, Path(), display_name(Path(path).name), (image, out, 0), save_maps)
    report(row, detector.threshold, as_json, detector.teaching)
    return [row]


def detect_folder(detector, files, root, output, flags, stop):
    """Score every file in batches (`Detector.batches`) with the model loaded once; one PNG each (and its
    thumbnail), then report.csv and index.html. flags: (as_json, save_maps).

    However it ends (a failed write, Ctrl-C / SIGTERM: `stop` ends it after the current batch), report.csv lists
    the pictures written. No readable image at all: UsageError, nothing written.
    """
    tidy_output_folders({output, *((output / picture_name(f.relative_to(root))).parent for f in files)})
    rows, page, stop.armed = [], [], True
    try:
        for group in progress(detector.batches(files), desc="detect", disable=flags[0]):
            detect_batch(detector, group, root, output, flags, rows, page)
            if stop.requested:
                raise stop.interrupted(f"report.csv lists the {len(rows)} of {len(files)} images done")
    except BaseException:
        with contextlib.suppress(OSError):
            write_csv(output / "report.csv", rows, flags[1])
        raise
    finally:
        stop.armed = False
    if not rows:
        raise UsageError(f"--image_path {display_name(root)}: none of its {len(files)} images could be read "
                         f"(warnings above)")
    write_csv(output / "report.csv", rows, flags[1])
    write_results_page(output, page, detector.threshold,
                       title=f"DRAEM results: {display_name(root)} · scored by {detector.pair_label()}")
    if len(rows) < len(files):
        log.warning("%d of %d images inspected, %d unreadable (warnings above)", len(rows), len(files),
                    len(files) - len(rows))
    return rows


def detect_batch(detector, group, root, output, flags, rows, page):
    """(file, image) pairs -> one picture, thumbnail, report row and page row each (appended to rows, page)."""
    as_json, save_maps = flags
    out = detector.predict([image for _, image in group])
    for j, (f, image) in enumerate(group):
        rel = f.relative_to(root)
        name = display_name(rel)
        row, page_row = image_outputs(detector, f, picture_name(rel), output, name, (image, out, j), save_maps,
                                      page_name=name)
        row["file"] = name
        rows.append(row)
        page.append(page_row)
        report(row, detector.threshold, as_json, detector.teaching)


def write_csv(path, rows, save_maps=False):
    columns = REPORT_HEADER.split(",") + (list(MAP_FILES) if save_maps else [])
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        w.writerows([f"{r[c]:.6f}" if c == "score" else r[c] for c in columns] for r in rows)


def run(args, stop):
    """Check the outputs, load the pair once, score the image or the folder, write the pictures (and report)."""
    files, base, output, folder_mode = resolve_inputs(args)
    check_outputs(args, files, output, folder_mode, find_pair(args.checkpoint_path, base))
    device = select_device(args.gpu_id)
    detector = Detector.from_checkpoint(args.checkpoint_path, base, device, resolve_amp(args.amp, device),
                                        bs=args.bs, max_pixels=args.max_pixels)
    log.info("device: %s, model: %s (%d px, scale %s%s)", device, detector.pair_label(), detector.size,
             describe_scale(detector.meta["config"]),
             "" if detector.threshold is not None else ", no calibrated threshold")
    if args.export_onnx:
        from utils.inference.export import export_onnx
        export_onnx(detector, args.export_onnx, shape=tuple(detector.read(files[0]).shape[1:]))
    if folder_mode:
        detect_folder(detector, files, Path(args.image_path), output, (args.json, args.save_maps), stop)
    else:
        tidy_output_folders([output.parent])
        detect_single(detector, files[0], output, args.json, args.save_maps)
    if not args.json:
        log.info("wrote %s", display_name(output))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    with ScriptExit("detect.py") as outcome:  # bad input: 2; a failed write: 1; a signal: 128 + n
        run(args, outcome.stop)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
