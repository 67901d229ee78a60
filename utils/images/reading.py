"""Reading images: the one reader (`read_image`: 8/16 bit, grey/RGB/RGBA, refused from its header when it has
more pixels than allowed), the working shape (square, native, or longer side N) and the conversion to tensors.
Every image file the project opens is opened by `read_file_bytes`: training, teaching, detection, evaluation and
the texture bank all read through here. A special file (a FIFO, a device) is never opened."""
import io
import math
import os
import stat

import cv2
import numpy as np
import torch
from PIL import Image

from utils.config import Config

DEFAULT_MAX_PIXELS = Config.max_pixels  # larger image files are refused from their header


SQUARE, NATIVE, AUTO = "square", "native", "auto"  # working scales; or an int N, the longer side in pixels


def scale_of(config):
    """The working scale a checkpoint config records ("square" for the authors' pairs): "square", "native", an int
    N (the longer side), or for "auto" the float zoom factor it resolved to (`auto_zoom`)."""
    scale = config.get("scale", SQUARE)
    if scale == AUTO:
        return float(config["scale_factor"])
    return scale if scale in (SQUARE, NATIVE) else int(scale)


def working_shape(height, width, scale, size):
    """(H, W) an image of height x width pixels has at the working scale (a float: that zoom factor)."""
    if scale == SQUARE:
        return size, size
    if scale == NATIVE:
        return height, width
    ratio = scale if isinstance(scale, float) else scale / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def describe_scale(config):
    """The working scale of a checkpoint config in words, for logs: "auto (zoom 0.62)", "square", "native", "512"."""
    scale = config.get("scale", SQUARE)
    return f"auto (zoom {float(config['scale_factor']):.3g})" if scale == AUTO else str(scale)


def auto_zoom(sizes, size, sides=(1.5, 1.25, 4.0)):
    """--scale auto: the zoom factor of the working images, from the training images' sizes [(width, height)] and
    the crop size `size`. One factor for all images, their aspect kept, so a defect keeps its size in pixels from
    image to image; from the medians of their areas and shorter sides, `sides` = (a, s, m) in units of `size`:
    - about (a size)^2 pixels (192^2 at the cpu preset), the area the square default's two halves looked at, so
      a crop sees much of the part in the minutes a CPU has (small images are zoomed up to it);
    - but an elongated part keeps at least s size pixels (160) across, up to its own pixels: a strip squashed to
      that area would lose its thin defects;
    - and at most (m size)^2 pixels."""
    if not sizes:
        return 1.0
    a, s, m = sides
    area = float(np.median([w * h for w, h in sizes]))
    short = float(np.median([min(w, h) for w, h in sizes]))
    zoom = max(math.sqrt((a * size) ** 2 / area), min(1.0, s * size / short))
    return float(min(zoom, math.sqrt((m * size) ** 2 / area)))


SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISSOCK, "a socket"))


def special_file_kind(path):
    """What special file `path` is (links followed: x.png -> /dev/zero), e.g. "a FIFO"; None for a regular file.
    Opening one could block forever (a FIFO) or never end (/dev/zero), so such files are never opened."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing or unreachable: opening it fails at once, and says so
    return _kind_of(mode)


def _kind_of(mode):
    return next((kind for is_kind, kind in SPECIAL_FILES if is_kind(mode)), None)


def read_file_bytes(path):
    """The bytes of the image file `path`: the one way the project opens an image file. A special file (a FIFO,
    a device, a socket, or a link to one: `special_file_kind`) is refused before it is opened, with a ValueError
    naming it; OSError when the file cannot be read."""
    kind = special_file_kind(path)
    if kind is None:
        # non-blocking, and checked again once open: a file swapped for a FIFO after the look never waits
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            kind = _kind_of(os.fstat(f.fileno()).st_mode)
            if kind is None:
                return f.read()
        raise ValueError(f"{path}: {kind}, not an image file (not read)")
    raise ValueError(f"{path}: {kind}, not an image file (not opened)")


def image_file_size(path):
    """(width, height) of an image file from its header (read through `read_file_bytes`); ValueError when it is a
    special file or has no header Pillow knows, OSError when it cannot be read."""
    return check_pixels(path, read_file_bytes(path), float("inf"))


def decode_image_file(path, flags, max_pixels):
    """cv2.imdecode of the file's bytes (`read_file_bytes`), or None when it cannot be read or is empty."""
    try:
        data = read_file_bytes(path)  # cv2.imread cannot open non-ASCII paths on some platforms: bytes always work
    except OSError:
        return None
    if not data:
        return None
    check_pixels(path, data, max_pixels)  # from the header, before cv2 allocates the decoded image
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)


def read_image(path, size=None, scale=SQUARE, max_pixels=DEFAULT_MAX_PIXELS):
    """Read an image as a float tensor (3, H, W) in [0, 1], RGB, at a working scale (`image_to_tensor`): grey
    replicated to 3 channels, alpha dropped, 16-bit scaled by 65535. ValueError naming the file if undecodable."""
    img = decode_image_file(path, cv2.IMREAD_UNCHANGED, max_pixels)
    if img is None or img.ndim not in (2, 3):
        raise ValueError(f"cannot read image file {path}")
    return image_to_tensor(img, size, bgr=True, scale=scale)


def image_to_tensor(img, size=None, bgr=False, scale=SQUARE):
    """An image array (H, W) or (H, W, 1|3|4), uint8 / uint16 / float in [0, 1] -> float tensor (3, H, W) in
    [0, 1], RGB, at the working scale (`working_shape`: (size, size) for "square"; no size: its own pixels),
    resized by area in the array's own dtype.
    bgr: the channels are in OpenCV's order (as cv2.imread gives)."""
    img = np.asarray(img)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array (H, W) or (H, W, 1|3|4), got shape {img.shape}")
    norm = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.dtype not in (np.uint8, np.uint16):  # float TIFFs etc.: assume [0, 1]
        img, norm = img.astype(np.float32), 1.0
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    elif bgr:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = working_shape(*img.shape[:2], NATIVE if size is None else scale, size)
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    img = img.astype(np.float32)
    img /= norm  # in place: a large image is not copied twice more
    np.clip(img, 0.0, 1.0, out=img)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def header_size(data):
    """(width, height) from an image file's bytes, read from its header only (Pillow opens lazily and decodes
    nothing), or None when Pillow knows no such image. Pillow's own decompression-bomb limit is off here:
    `check_pixels` applies ours (--max_pixels)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (OSError, ValueError, SyntaxError):  # UnidentifiedImageError is an OSError; broken headers raise others
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_pixels(path, data, max_pixels=DEFAULT_MAX_PIXELS):
    """ValueError naming the file when its header is unknown or it holds more than `max_pixels` pixels."""
    size = header_size(data)
    if size is None:
        raise ValueError(f"cannot read image file {path} (no image header Pillow knows)")
    w, h = size
    if w * h > max_pixels:
        raise ValueError(f"image {path} is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                         f"{max_pixels / 1e6:.1f} (raise it with --max_pixels)")
    return size
