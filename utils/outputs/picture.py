"""The 4-panel picture detect.py and evaluate.py draw: input, reconstruction, raw anomaly map, overlay with the
outline, score and verdict; every panel at the image's own aspect ratio."""
import logging

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.model_unet import verdict
from utils.outputs.maps import OVERLAY_ALPHA, as_rgb01, encode_png
from utils.storage.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


PANEL_TITLES = ("Input (original)", "Reconstructed", "Anomaly Map (raw)", "Result (overlay)")


FIG_WIDTH, FIG_HEIGHT = 16.0, 10.0  # inches, at most; at DPI 100 a square image gives about 1600 x 480 pixels
STACKED_HEIGHT = 20.0  # inches, at most, for a strip's four panels stacked: each as wide as the figure


DPI = 100


TITLE_SPACE = 0.55  # inches per row of panels for their titles


COLOR_OK, COLOR_NG, COLOR_UNCALIBRATED = "#2ecc40", "#ff4136", "#bbbbbb"


def _verdict(score: float, threshold) -> tuple[str, str]:
    """Text and colour of the decision; ``score > threshold`` is a defect (NG)."""
    label = verdict(score, threshold)
    if label == "n/a":
        return "no calibrated threshold", COLOR_UNCALIBRATED
    return f"{label}  (thr {threshold:.3f})", COLOR_NG if label == "NG" else COLOR_OK


def panel_grid(height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the four panels for an image of height x width: 1 x 4 up to 1.25:1 (and for tall images),
    2 x 2 up to 2.5:1, and a wide strip's panels stacked (4 x 1), each as wide as the picture."""
    aspect = width / height
    if aspect <= 1.25:
        return 1, 4
    return (2, 2) if aspect < 2.5 else (4, 1)


def _figsize(height: int, width: int) -> tuple[tuple[float, float], float]:
    """(figure inches, panel width in pixels): panels as large as fit in FIG_WIDTH x FIG_HEIGHT (STACKED_HEIGHT
    for a stacked strip) at the image's aspect ratio."""
    rows, cols = panel_grid(height, width)
    aspect = width / height
    max_height = STACKED_HEIGHT if cols == 1 else FIG_HEIGHT
    panel_w = min((FIG_WIDTH - 1.0) / cols, (max_height / rows - TITLE_SPACE) * aspect)  # 1 in: colour bar
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
    text, colour = _verdict(score, threshold)
    box = dict(boxstyle="round,pad=0.3", facecolor="black", alpha=0.65, edgecolor="none")
    ax.text(0.03, 0.97, f"score {score:.3f}", transform=ax.transAxes, ha="left", va="top",
            fontsize=16, fontweight="bold", color="white", bbox=box)
    ax.text(0.03, 0.03, text, transform=ax.transAxes, ha="left", va="bottom",
            fontsize=16 if threshold is not None else 12, fontweight="bold", color=colour, bbox=box)


def _build_figure(image, reconstruction, anomaly_map, score, threshold=None, title=None,
                  contour_level=None, reconstruction_note=None, scale_note=None) -> Figure:
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
    bar = fig.colorbar(raw, ax=axes[2], fraction=0.046, pad=0.02)
    if threshold is not None and 0.0 <= threshold <= 1.0:  # where OK ends on the scale: a white line, "thr"
        bar.ax.axhline(threshold, color="white", linewidth=3)
        bar.ax.axhline(threshold, color="black", linewidth=1)
        bar.ax.text(-0.15, threshold, "thr", transform=bar.ax.get_yaxis_transform(), ha="right", va="center",
                    fontsize=9)
    if scale_note:  # what the numbers mean (Detector.map_scale_note)
        bar.set_label(scale_note, fontsize=9)
    _draw_result(axes[3], image, anomaly_map, score, threshold, contour_level)
    titles = list(PANEL_TITLES)
    if reconstruction_note:  # a reconstruction not learnt yet says so, rather than pass for the part
        titles[1] += f"\n({reconstruction_note})"
    for ax, panel_title in zip(axes, titles):
        ax.set_title(panel_title, fontsize=14)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=15)
    return fig


def at_image_pixels(original, reconstruction, anomaly_map):
    """The panels at the image's own pixels: the working-scale reconstruction (h, w, 3) and map (h, w) resized to
    the original image (H, W, 3) (bilinear), so the outline lies on the defect as the file shows it; as they are
    when the working scale is the image's own."""
    h, w = np.asarray(original).shape[:2]
    if np.asarray(anomaly_map).shape[-2:] == (h, w):
        return original, reconstruction, anomaly_map
    resize = lambda a: cv2.resize(np.asarray(a, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    return original, resize(reconstruction), resize(anomaly_map)


def render_panels(image, reconstruction, anomaly_map, score, threshold=None, title=None,
                  contour_level=None, reconstruction_note=None, scale_note=None) -> np.ndarray:
    """Render the 4-panel figure to an RGB uint8 array of shape (h, w, 3) (w ~ 3.4 h for a square image).

    image, reconstruction: (H, W, 3) RGB float in [0, 1] (grayscale and uint8 are accepted too).
    anomaly_map: (H, W) float in [0, 1]. score: image-level anomaly score.
    threshold: None -> "no calibrated threshold"; else NG if score > threshold, OK otherwise, and the
    contour of ``anomaly_map > contour_level`` (default: threshold) is drawn on the overlay.
    title: optional figure title (e.g. the file name).
    reconstruction_note: said beside "Reconstructed" (Detector.reconstruction_note: a reconstruction not learnt yet).
    scale_note: the colour bar's label, what its values mean (Detector.map_scale_note); the threshold is marked on it.
    """
    fig = _build_figure(image, reconstruction, anomaly_map, score, threshold, title, contour_level,
                        reconstruction_note, scale_note)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (h, w, 3) uint8


def save_panels(path, *args, **kwargs) -> None:
    """``render_panels(*args, **kwargs)`` written atomically as a PNG at ``path`` (parents created)."""
    atomic_write_bytes(path, encode_png(render_panels(*args, **kwargs)))
    log.debug("wrote %s", path)
