"""Per-image files of `detect.py --save_maps`: the anomaly map as a 16-bit PNG, the defect mask (0/255) and the
overlay; the overlay and PNG encoding the picture and the page share."""
from pathlib import Path

import cv2
import matplotlib
import numpy as np

from utils.storage.atomic import atomic_write_bytes

OVERLAY_ALPHA = 0.5


def as_rgb01(image) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3), float in [0, 1] or uint8 -> (H, W, 3) float in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image / 255.0
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.shape[2] == 1:  # grayscale datasets (e.g. magnetic tile)
        image = np.repeat(image, 3, axis=2)
    return np.clip(image.astype(np.float32), 0.0, 1.0)


FULL_SCALE = 65535  # the 16-bit PNG value of map value 1.0


def map_to_16bit(amap, height: int, width: int) -> np.ndarray:
    """(h, w) float map in [0, 1] -> (height, width) uint16: bilinear resize, clip to [0, 1], round to 0..65535."""
    amap = np.asarray(amap, dtype=np.float32).squeeze()  # (h, w)
    if amap.ndim != 2:
        raise ValueError(f"expected an (H, W) anomaly map, got shape {amap.shape}")
    if amap.shape != (height, width):
        amap = cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.rint(np.clip(amap, 0.0, 1.0) * FULL_SCALE).astype(np.uint16)


def mask_from_16bit(map16, threshold: float) -> np.ndarray:
    """(H, W) uint16 map -> (H, W) uint8 mask: 255 where map16 / 65535 > threshold, 0 elsewhere."""
    return np.where(np.asarray(map16, dtype=np.float64) / FULL_SCALE > float(threshold), 255, 0).astype(np.uint8)


def defect_mask(amap, threshold: float, height: int, width: int) -> np.ndarray:
    """The 0/255 mask at the input's size, from the same 16-bit values the map PNG holds."""
    return mask_from_16bit(map_to_16bit(amap, height, width), threshold)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: the inner boundary of the mask, thickened to about `width` pixels (odd)."""
    inside = mask > 0
    eroded = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8))  # border: outside counts as inside
    edge = (inside & (eroded == 0)).astype(np.uint8)
    return cv2.dilate(edge, np.ones((width, width), np.uint8)) > 0 if width > 1 else edge > 0


def overlay(image, amap, threshold=None) -> np.ndarray:
    """The 4th panel alone, at the image's size: (H, W, 3) RGB uint8.

    image: (H, W, 3) RGB or (H, W) grey, float in [0, 1] or uint8, at its original size.
    amap: (h, w) float map in [0, 1] (resized bilinearly to H x W). threshold: None -> heat overlay only;
    else the outline of the mask (``defect_mask``) is drawn white under red, as the 4-panel picture does.
    """
    rgb = as_rgb01(image)  # (H, W, 3) float in [0, 1]
    h, w = rgb.shape[:2]
    map16 = map_to_16bit(amap, h, w)
    heat = matplotlib.colormaps["jet"](map16.astype(np.float32) / FULL_SCALE)[..., :3]  # (H, W, 3)
    out = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * heat
    if threshold is not None:
        mask = mask_from_16bit(map16, threshold)
        red = max(1, round(max(h, w) / 400)) | 1  # about the picture's 1.5 pt line on a 400 px panel
        out[_outline(mask, 3 * red)] = (1.0, 1.0, 1.0)
        out[_outline(mask, red)] = (1.0, 0.0, 0.0)
    return np.rint(out * 255).astype(np.uint8)


def encode_png(array) -> bytes:
    """(H, W) uint8/uint16 or (H, W, 3) RGB uint8 -> PNG bytes."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., ::-1]  # cv2 wants BGR
    ok, png = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape} and type {array.dtype}")
    return png.tobytes()


MAP_FILES = ("map", "mask", "overlay")  # the per-image files of detect.py --save_maps, in report.csv's order


def map_output_paths(picture) -> dict:
    """The per-image files beside a 4-panel picture: `sub/x.jpg.png` -> `sub/x.jpg.map.png`, `.mask.png`,
    `.overlay.png` (single-image mode: `result.png` -> `result.map.png` ...)."""
    stem = Path(picture).with_suffix("")
    return {kind: stem.with_name(f"{stem.name}.{kind}.png") for kind in MAP_FILES}


def save_map_outputs(picture, image, amap, threshold) -> dict:
    """Write the map, mask and overlay of one image beside its picture, atomically; returns {kind: path}.

    image: the input at its original size, (H, W, 3) RGB float in [0, 1]. amap: (h, w) map at the working scale.
    threshold: None (uncalibrated checkpoint) -> no mask is written (its entry is None) and the overlay has no
    outline.
    """
    h, w = np.asarray(image).shape[:2]
    map16 = map_to_16bit(amap, h, w)
    paths = map_output_paths(picture)
    atomic_write_bytes(paths["map"], encode_png(map16))
    if threshold is None:
        paths["mask"] = None
    else:
        atomic_write_bytes(paths["mask"], encode_png(mask_from_16bit(map16, threshold)))
    atomic_write_bytes(paths["overlay"], encode_png(overlay(image, amap, threshold)))
    return paths
