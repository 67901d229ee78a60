"""Two proxy data sets built from the real development data (../shared/data), to measure the detector on images
that are far from square. Both are MVTec-layout class folders written OUTSIDE the repository, made once
(dataset_folder.make_once: temp folder, marker last) and seeded:

    python -m utils.synthesis.proxies mtd_long  --src ../shared/data/magnetic_tile/magnetic_tile --out proxies
    python -m utils.synthesis.proxies mpdd_tall --src ../shared/data/mpdd_metal_plate/metal_plate --out proxies

mtd_long   Magnetic Tile Defects' long parts: every image whose longer side is >= 2.2 x its shorter side, in each
           split and defect type, with its mask; symbolic links to the original files, nothing copied.
mpdd_tall  MPDD metal_plate cut into tall 512 x 160 crops (aspect 3.2): train/good 3 crops per image; test/good and
           test/crack two disjoint crops of each test/good image, one left good, one given a simulated hairline
           crack; test/defect the crop centred on each real defect's mask. New PNGs.
"""
import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from utils.cli import report_error
from utils.data_loader import list_images, list_test_images
from utils.images.reading import DEFAULT_MAX_PIXELS, decode_image_file, image_file_size
from utils.runtime import UsageError
from utils.storage.output_rules import refuse_inside
from utils.synthesis import strokes
from utils.synthesis.dataset_folder import make_once

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
FORMAT_VERSION = 1  # bump when a builder changes, so built copies are rebuilt

MIN_ASPECT = 2.2  # mtd_long: longer side / shorter side

CROP_W = 160  # mpdd_tall: crops are the full height (512) x 160 wide
N_CROPS = 3  # evenly spaced across the width: x = 0, 176, 352 on a 512-wide image
CRACK_LENGTH = (60, 250)  # px, the main line; 0-2 branches add to it
CRACK_WIDTH = (1.0, 1.8)  # px drawn; the mask adds an anti-aliased fringe: ~1.4-2.5 px
CRACK_DARKEN = (0.25, 0.45)  # the metal under the crack loses 25-45 % of its brightness
ALPHA_MIN = 0.3  # fainter fringe pixels are left untouched: the mask is a hairline, not a halo
PLATE_MARGIN = 3  # px: a crack's centre line stays this far inside the painted plate


# ---------------------------------------------------------------------------------------------- mtd_long
def aspect(path):
    """Longer side / shorter side of an image file, from its header; ValueError if it cannot be read."""
    size = image_file_size(path)
    return max(size) / min(size)


def _mask_of(src, kind, image):
    mask = src / "ground_truth" / kind / f"{image.stem}_mask.png"
    if not mask.is_file():
        raise ValueError(f"no mask {mask} for {image}")
    return mask


def _link(target, link):
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve())  # absolute: the link works wherever the folder is renamed to


def _write_mtd_long(src, out, min_aspect):
    for image in list_images(src / "train" / "good"):
        if aspect(image) >= min_aspect:
            _link(image, out / "train" / "good" / image.name)
    for kind, image in list_test_images(src / "test"):
        if aspect(image) >= min_aspect:
            _link(image, out / "test" / kind / image.name)
            if kind != "good":
                _link(_mask_of(src, kind, image), out / "ground_truth" / kind / f"{image.stem}_mask.png")


def mtd_long(src, out_root, min_aspect=MIN_ASPECT):
    """Build (once) `out_root/mtd_long` from an MTD class folder `src`: links to its long images and their masks."""
    src = _checked(src, out_root)
    params = dict(version=FORMAT_VERSION, src=str(src), min_aspect=min_aspect)
    return make_once(out_root, "mtd_long", params, lambda out: _write_mtd_long(src, out, min_aspect))


# ---------------------------------------------------------------------------------------------- mpdd_tall
def crop_offsets(width, crop_w=CROP_W, n=N_CROPS):
    """x of `n` crops `crop_w` wide spread evenly across `width` (first at 0, last at the right edge)."""
    return [int(round(x)) for x in np.linspace(0, width - crop_w, n)]


def plate_mask(bgr):
    """(H, W) bool: the painted plate (saturated colour) as against the grey background, wire and hole."""
    sat = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 1]
    plate = (sat > 100).astype(np.uint8)
    return cv2.morphologyEx(plate, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) > 0  # drop specks


def add_crack(rng, bgr, tries=50):
    """A copy of the (H, W, 3) uint8 crop with one thin dark crack on its plate, and the bool mask of exactly the
    pixels it altered; None when no crack fits on the plate (too little of it in the crop).

    The crack darkens multiplicatively (shading and colour kept). Each try draws a new length and shape, so on a
    narrow strip of plate the shorter ones are the ones that fit."""
    allowed = cv2.erode(plate_mask(bgr).astype(np.uint8), np.ones((2 * PLATE_MARGIN + 1,) * 2, np.uint8)) > 0
    for _ in range(tries):
        shape = strokes.crack_lines(rng, rng.uniform(*CRACK_LENGTH), branches=int(rng.integers(0, 3)))
        lines = strokes.place(rng, shape, allowed)
        if lines is not None:
            break
    else:
        return None
    alpha = strokes.draw_polylines(bgr.shape[:2], lines, rng.uniform(*CRACK_WIDTH))
    alpha[alpha < ALPHA_MIN] = 0
    gain = 1 - alpha * rng.uniform(*CRACK_DARKEN)  # (H, W)
    out = np.clip(bgr * gain[..., None] + 0.5, 0, 255).astype(np.uint8)
    return out, (out != bgr).any(axis=-1)


def centred_offset(mask, crop_w=CROP_W):
    """x of the `crop_w`-wide crop centred on the middle of the mask's extent, clamped to the image."""
    xs = np.flatnonzero(mask.any(axis=0))
    centre = (xs[0] + xs[-1]) / 2 if len(xs) else mask.shape[1] / 2
    return int(np.clip(round(centre - crop_w / 2), 0, mask.shape[1] - crop_w))


def _read(path, flags=cv2.IMREAD_COLOR):
    img = decode_image_file(path, flags, DEFAULT_MAX_PIXELS)
    if img is None:
        raise ValueError(f"cannot read image file {path}")
    return img


def _write_png(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


def _crop_name(image, x):
    return f"{image.stem}_x{x:03d}"


def _write_train(src, out):
    for image in list_images(src / "train" / "good"):
        bgr = _read(image)
        for x in crop_offsets(bgr.shape[1]):
            _write_png(out / "train" / "good" / f"{_crop_name(image, x)}.png", bgr[:, x:x + CROP_W])


def _write_good_and_cracked(src, out, seed):
    """Per test/good image: its first and last crops (disjoint), one kept good, the other cracked; which one
    alternates from image to image (the other is cracked when the preferred one has no room for a crack)."""
    for i, image in enumerate(list_images(src / "test" / "good")):
        bgr = _read(image)
        first, *_, last = crop_offsets(bgr.shape[1])
        rng = np.random.default_rng([seed, i])  # per image: an image does not change when others are added
        preferred = (last, first) if i % 2 == 0 else (first, last)  # (cracked x, good x)
        for cracked_x, good_x in (preferred, preferred[::-1]):
            cracked = add_crack(rng, bgr[:, cracked_x:cracked_x + CROP_W])
            if cracked is not None:
                break
        else:
            log.warning("%s: no room for a crack on the plate in either crop; only a good crop is kept", image)
            cracked_x, good_x = None, first
        _write_png(out / "test" / "good" / f"{_crop_name(image, good_x)}.png", bgr[:, good_x:good_x + CROP_W])
        if cracked is not None:
            name = _crop_name(image, cracked_x)
            _write_png(out / "test" / "crack" / f"{name}.png", cracked[0])
            _write_png(out / "ground_truth" / "crack" / f"{name}_mask.png", cracked[1].astype(np.uint8) * 255)


def _write_real_defects(src, out):
    for kind, image in list_test_images(src / "test"):
        if kind == "good":
            continue
        bgr, mask = _read(image), _read(_mask_of(src, kind, image), cv2.IMREAD_GRAYSCALE) > 127
        if mask.shape != bgr.shape[:2]:
            raise ValueError(f"{image}: mask {mask.shape} and image {bgr.shape[:2]} differ in size")
        x = centred_offset(mask)
        crop_mask = mask[:, x:x + CROP_W]
        if not crop_mask.any():
            log.info("%s: the crop at x=%d holds none of the defect; skipped", image, x)
            continue
        name = _crop_name(image, x)
        _write_png(out / "test" / kind / f"{name}.png", bgr[:, x:x + CROP_W])
        _write_png(out / "ground_truth" / kind / f"{name}_mask.png", crop_mask.astype(np.uint8) * 255)


def _write_mpdd_tall(src, out, seed):
    _write_train(src, out)
    _write_good_and_cracked(src, out, seed)
    _write_real_defects(src, out)


def mpdd_tall(src, out_root, seed=0):
    """Build (once) `out_root/mpdd_tall` from an MPDD class folder `src` (512 x 512 images): tall crops."""
    src = _checked(src, out_root)
    params = dict(version=FORMAT_VERSION, src=str(src), seed=seed, crop_w=CROP_W, n_crops=N_CROPS)
    return make_once(out_root, "mpdd_tall", params, lambda out: _write_mpdd_tall(src, out, seed))


# ---------------------------------------------------------------------------------------------- both
def _checked(src, out_root):
    """The resolved source class folder; UsageError when it lacks train/good or test, or when the output would
    land inside the source or inside this repository (real data is never copied into it)."""
    src = Path(src).resolve()
    if not (src / "train" / "good").is_dir() or not (src / "test").is_dir():
        raise UsageError(f"--src {src}: not an MVTec-layout class folder (no train/good or test)")
    refuse_inside(out_root, src, out_flag="--out", in_flag="--src")
    out = Path(out_root).resolve()
    if out == REPO or REPO in out.parents:
        raise UsageError(f"--out {out_root} is inside the repository {REPO}: data built from the real images "
                         f"goes outside it")
    return src


BUILDERS = {"mtd_long": mtd_long, "mpdd_tall": mpdd_tall}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.synthesis.proxies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("proxy", choices=sorted(BUILDERS), help="which proxy data set to build")
    p.add_argument("--src", required=True, help="the real class folder (MVTec layout) it is built from")
    p.add_argument("--out", required=True, help="folder (outside the repository) that receives OUT/<proxy>")
    p.add_argument("--seed", type=int, default=0, help="mpdd_tall: seed of the simulated cracks (default: 0)")
    p.add_argument("--min_aspect", type=float, default=MIN_ASPECT,
                   help=f"mtd_long: the least longer/shorter side ratio kept (default: {MIN_ASPECT})")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    extra = {"seed": args.seed} if args.proxy == "mpdd_tall" else {"min_aspect": args.min_aspect}
    try:
        folder = BUILDERS[args.proxy](args.src, args.out, **extra)
    except (UsageError, ValueError, OSError) as e:
        return report_error("proxies", e)  # one line; 2 for bad input, 1 for a failed write (utils/cli.py)
    for split in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        log.info("%s: %d", split.relative_to(folder), sum(1 for _ in split.iterdir()))
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
