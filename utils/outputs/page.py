"""The results page: one self-contained `index.html` (template results_page.html) with a thumbnail per image, sorting,
filters and a live threshold slider; opens from disk."""
import html
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from model.model_unet import verdict
from utils.outputs.maps import overlay
from utils.outputs.picture import COLOR_NG, COLOR_OK, save_panels
from utils.storage.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


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


def write_scored_image(picture, image, reconstruction, amap, score, threshold, title, page_folder=None, name=None,
                       defect_type=None, label=None, reconstruction_note=None, scale_note=None):
    """The 4-panel picture of one scored image (image and reconstruction (H, W, 3), amap (H, W)); with
    `page_folder`, also its overlay thumbnail there and its PageRow for the page `name`d so (else None)."""
    save_panels(picture, image, reconstruction, amap, score, threshold=threshold, title=title,
                reconstruction_note=reconstruction_note, scale_note=scale_note)
    if page_folder is None:
        return None
    thumb = write_thumbnail(page_folder, name, overlay(image, amap, threshold))
    return PageRow(name, score, verdict(score, threshold), thumb, picture, defect_type, label)


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
