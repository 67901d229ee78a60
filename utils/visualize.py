"""What a run draws and writes for people and a line's software: the 4-panel picture, the per-image map, mask and
overlay files, and the results page.

The picture (`render_panels`, `save_panels`): input | reconstruction | raw anomaly map | overlay with score and
verdict, each panel the whole image at its aspect ratio: side by side (1 x 4) for square and tall images, 2 x 2 up
to 4.5:1, stacked (4 x 1) beyond, so a 2048x256 line-scan strip stays readable. An image larger than its panel is
reduced first, the pictures by area averaging and the map by block maximum, so a defect a few pixels wide stays
visible. matplotlib's object-oriented API (``Figure`` + ``FigureCanvasAgg``): no display, no pyplot state.

The per-image files (`save_map_outputs`) are at the input's own size: the map resized bilinearly and stored as a
16-bit PNG (0..65535 for 0..1), the mask 255 where ``map16 / 65535 > threshold`` (the threshold calibrated on the
image score, applied pixelwise as the picture's outline is), so a reader gets exactly the mask back from the map.
Both image scores never exceed the map's maximum, so an NG image has a non-empty mask; an OK image may still have
a few mask pixels (hot spots too small to lift the score).

The results page (`write_results_page`): one self-contained `index.html` (CSS and JS from results_page.html
inline, the data a JSON block, thumbnails and pictures linked relatively) that opens from disk with no server or
network. It sorts by score or name, filters by verdict and defect type, and its threshold slider (starting at the
stored threshold; `#threshold=0.42` in the address sets it) re-colours the verdicts live with the NG count and,
with labels, the false-reject rate and recall. Names from non-UTF-8 file names show their bytes as \\xNN.

    >>> img = np.zeros((32, 32, 3)); amap = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    >>> render_panels(img, img, np.zeros((32, 32)), score=0.1).shape[2]
    3
    >>> mask_from_16bit(map_to_16bit(amap, 2, 2), 0.4).tolist()
    [[0, 255], [255, 0]]
"""
import html
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)

PANEL_TITLES = ("Input (original)", "Reconstructed", "Anomaly Map (raw)", "Result (overlay)")
FIG_WIDTH, FIG_HEIGHT = 16.0, 10.0  # inches, at most; at DPI 100 a square image gives about 1600 x 480 pixels
DPI = 100
TITLE_SPACE = 0.55  # inches per row of panels for their titles
OVERLAY_ALPHA = 0.5
COLOR_OK, COLOR_NG, COLOR_UNCALIBRATED = "#2ecc40", "#ff4136", "#bbbbbb"


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


def _verdict(score: float, threshold) -> tuple[str, str]:
    """Text and colour of the decision; ``score > threshold`` is a defect (NG)."""
    if threshold is None:
        return "no calibrated threshold", COLOR_UNCALIBRATED
    label = "NG" if score > threshold else "OK"
    return f"{label}  (thr {threshold:.3f})", COLOR_NG if label == "NG" else COLOR_OK


def panel_grid(height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the four panels for an image of height x width: 1 x 4 up to 1.25:1 (and for tall images),
    2 x 2 up to 4.5:1, 4 x 1 beyond."""
    aspect = width / height
    if aspect <= 1.25:
        return 1, 4
    return (2, 2) if aspect < 4.5 else (4, 1)


def _figsize(height: int, width: int) -> tuple[tuple[float, float], float]:
    """(figure inches, panel width in pixels): panels as large as fit in FIG_WIDTH x FIG_HEIGHT at the image's
    aspect ratio."""
    rows, cols = panel_grid(height, width)
    aspect = width / height
    panel_w = min((FIG_WIDTH - 1.0) / cols, (FIG_HEIGHT / rows - TITLE_SPACE) * aspect)  # 1 in: colour bar
    panel_h = panel_w / aspect
    return (cols * panel_w + 1.0, rows * (panel_h + TITLE_SPACE) + 0.5), panel_w * DPI  # 0.5 in: the title


def _reduce_for_display(image, reconstruction, anomaly_map, panel_px):
    """Shrink all three by the same integer factor when the image is over twice its panel's width in pixels:
    pictures by area averaging, the map by block maximum (a 2-pixel scratch on an 8000-pixel strip must not fade
    out)."""
    h, w = anomaly_map.shape
    k = int(w // max(panel_px, 1))
    if k <= 1:
        return image, reconstruction, anomaly_map
    ph, pw = -(-h // k) * k, -(-w // k) * k
    padded = np.pad(anomaly_map, ((0, ph - h), (0, pw - w)), mode="edge")
    small_map = padded.reshape(ph // k, k, pw // k, k).max(axis=(1, 3))  # (ceil(H/k), ceil(W/k))
    size = (small_map.shape[1], small_map.shape[0])
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
            cv2.resize(reconstruction, size, interpolation=cv2.INTER_AREA), small_map)


def _draw_result(ax, image, anomaly_map, score, threshold, contour_level) -> None:
    """Panel 4: input blended with the jet heatmap, the contour of the defect region, score and verdict."""
    heat = matplotlib.colormaps["jet"](anomaly_map)[..., :3]  # (H, W, 3) in [0, 1]
    ax.imshow((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * heat)
    if threshold is not None:
        level = threshold if contour_level is None else contour_level
        # contour() warns when the level lies outside the data range: nothing to outline then.
        if min(anomaly_map.shape) > 1 and anomaly_map.min() < level < anomaly_map.max():  # a contour needs 2x2
            # A wide white line under a narrow red one stays visible on both dark and bright (jet) areas.
            ax.contour(anomaly_map, levels=[level], colors="white", linewidths=3.0)
            ax.contour(anomaly_map, levels=[level], colors="red", linewidths=1.5)
    verdict, colour = _verdict(score, threshold)
    box = dict(boxstyle="round,pad=0.3", facecolor="black", alpha=0.65, edgecolor="none")
    ax.text(0.03, 0.97, f"score {score:.3f}", transform=ax.transAxes, ha="left", va="top",
            fontsize=16, fontweight="bold", color="white", bbox=box)
    ax.text(0.03, 0.03, verdict, transform=ax.transAxes, ha="left", va="bottom",
            fontsize=16 if threshold is not None else 12, fontweight="bold", color=colour, bbox=box)


def _build_figure(image, reconstruction, anomaly_map, score, threshold=None, title=None,
                  contour_level=None) -> Figure:
    """Build (but do not draw) the 4-panel figure; see ``render_panels`` for the arguments."""
    image, reconstruction = np.asarray(image), np.asarray(reconstruction)
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim == 3:  # (1, H, W): only the channel axis goes (a 1 x N image keeps both of its sides)
        anomaly_map = anomaly_map[0]
    if not anomaly_map.shape == image.shape[:2] == reconstruction.shape[:2]:
        raise ValueError(f"anomaly_map {anomaly_map.shape}, image {image.shape[:2]} and reconstruction "
                         f"{reconstruction.shape[:2]} differ in size")
    figsize, panel_px = _figsize(*anomaly_map.shape)
    # reduced first, so a large image is never copied at full size for drawing
    image, reconstruction, anomaly_map = _reduce_for_display(image, reconstruction, anomaly_map, panel_px)
    image, reconstruction = as_rgb01(image), as_rgb01(reconstruction)
    anomaly_map = np.clip(anomaly_map, 0.0, 1.0)
    score = float(score)
    threshold = None if threshold is None else float(threshold)

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    axes = fig.subplots(*panel_grid(*anomaly_map.shape)).ravel()
    axes[0].imshow(image)
    axes[1].imshow(reconstruction)
    raw = axes[2].imshow(anomaly_map, cmap="jet", vmin=0.0, vmax=1.0)
    fig.colorbar(raw, ax=axes[2], fraction=0.046, pad=0.02)
    _draw_result(axes[3], image, anomaly_map, score, threshold, contour_level)
    for ax, panel_title in zip(axes, PANEL_TITLES):
        ax.set_title(panel_title, fontsize=14)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=15)
    return fig


def render_panels(image, reconstruction, anomaly_map, score, threshold=None, title=None,
                  contour_level=None) -> np.ndarray:
    """Render the 4-panel figure to an RGB uint8 array of shape (h, w, 3) (w ~ 3.4 h for a square image).

    image, reconstruction: (H, W, 3) RGB float in [0, 1] (grayscale and uint8 are accepted too).
    anomaly_map: (H, W) float in [0, 1]. score: image-level anomaly score.
    threshold: None -> "no calibrated threshold"; else NG if score > threshold, OK otherwise, and the
    contour of ``anomaly_map > contour_level`` (default: threshold) is drawn on the overlay.
    title: optional figure title (e.g. the file name).
    """
    fig = _build_figure(image, reconstruction, anomaly_map, score, threshold, title, contour_level)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (h, w, 3) uint8


def save_panels(path, *args, **kwargs) -> None:
    """``render_panels(*args, **kwargs)`` written atomically as a PNG at ``path`` (parents created)."""
    atomic_write_bytes(path, encode_png(render_panels(*args, **kwargs)))
    log.debug("wrote %s", path)


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


PAGE_NAME = "index.html"
THUMBS = "thumbs"
THUMB_SIDE = 160  # pixels, the longer side of a thumbnail
THUMB_QUALITY = 85  # JPEG
PAGE_TEMPLATE = (Path(__file__).parent / "results_page.html").read_text(encoding="utf-8")  # {{...}}: filled below
PLACEHOLDER_RE = re.compile(r"\{\{(TITLE|COLOR_OK|COLOR_NG|DATA)\}\}")


@dataclass(frozen=True)
class PageRow:
    """One image on the page. Paths are files in (or under) the page's folder.

    name: the input's relative path (a str; undecodable bytes as surrogate escapes are fine).
    verdict: at the stored threshold ("OK", "NG", or the tool's text when uncalibrated).
    label: "good" or "defect" when the truth is known (evaluate), else None.
    """
    name: str
    score: float
    verdict: str
    thumb: Path
    picture: Path
    defect_type: str | None = None
    label: str | None = None


def readable(name: str) -> str:
    """`name` as displayable text: undecodable bytes (surrogate escapes) shown as \\xNN."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def relative_url(path, folder) -> str:
    """Link from a page in `folder` to `path`: relative, '/'-separated, raw bytes percent-encoded."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return quote(os.fsencode(Path(rel).as_posix()), safe="/")


def thumbnail_jpeg(rgb, side: int = THUMB_SIDE) -> bytes:
    """(H, W, 3) RGB uint8 -> JPEG bytes, reduced (area averaging) so the longer side is at most `side`."""
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    k = side / max(h, w)
    if k < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an array of shape {rgb.shape}")
    return jpeg.tobytes()


def thumb_path(folder, name: str) -> Path:
    """Where the thumbnail of input `name` (relative path) goes: <folder>/thumbs/<name>.jpg."""
    return Path(folder) / THUMBS / f"{name}.jpg"


def write_thumbnail(folder, name: str, overlay_rgb) -> Path:
    """Write the overlay thumbnail of input `name` under the page folder; returns its path."""
    path = thumb_path(folder, name)
    atomic_write_bytes(path, thumbnail_jpeg(overlay_rgb))
    return path


def _slider_range(scores, threshold) -> tuple[float, float]:
    """(low, high) spanning every score and the threshold; widened when they are all equal."""
    values = list(scores) + ([] if threshold is None else [threshold])
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return low, high


def page_data(rows, folder, threshold, title) -> dict:
    """What the page's script reads: plain types only (the JSON block)."""
    low, high = _slider_range([r.score for r in rows], threshold)
    return {
        "title": title, "threshold": threshold, "low": low, "high": high,
        "has_labels": any(r.label is not None for r in rows),
        "has_types": any(r.defect_type is not None for r in rows),
        "rows": [{"name": readable(r.name), "score": float(r.score), "verdict": r.verdict,
                  "thumb": relative_url(r.thumb, folder), "picture": relative_url(r.picture, folder),
                  "type": None if r.defect_type is None else readable(r.defect_type), "label": r.label}
                 for r in rows],
    }


def json_for_script(data) -> str:
    """JSON safe inside <script>: every '<', '>' and '&' as a \\u escape (so no '</script>' or '<!--')."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(rows, folder, threshold, title="DRAEM results") -> str:
    """The whole page as text (see the module doc); `folder` is where it will be written."""
    data = page_data(rows, folder, threshold, title)
    fields = {"TITLE": html.escape(readable(title)), "COLOR_OK": COLOR_OK, "COLOR_NG": COLOR_NG,
              "DATA": json_for_script(data)}
    return PLACEHOLDER_RE.sub(lambda m: fields[m.group(1)], PAGE_TEMPLATE)  # one pass: no field is re-read


def write_results_page(folder, rows, threshold, title="DRAEM results") -> Path:
    """Write <folder>/index.html for `rows` (PageRow) and the stored `threshold` (None: uncalibrated)."""
    path = Path(folder) / PAGE_NAME
    atomic_write_bytes(path, render_page(rows, folder, threshold, title).encode("utf-8"))
    log.info("wrote %s (%d images)", path, len(rows))
    return path
