"""Reading images: the one reader (`read_image`: 8/16 bit, grey/RGB/RGBA, refused from its header when it has
more pixels than allowed), the working shape (square, native, or longer side N) and the conversion to tensors.
Training, detection, evaluation and the texture bank all read through here. A special file (a FIFO, a device) is
never opened."""
import os
import stat
import struct

import cv2
import numpy as np
import torch

from utils.config import Config

DEFAULT_MAX_PIXELS = Config.max_pixels  # larger image files are refused from their header


SQUARE, NATIVE = "square", "native"  # working scales; or an int N, the longer side in pixels


def scale_of(config):
    """The working scale a checkpoint config records ("square" for the authors' pairs)."""
    scale = config.get("scale", SQUARE)
    return scale if scale in (SQUARE, NATIVE) else int(scale)


def working_shape(height, width, scale, size):
    """(H, W) an image of height x width pixels has at the working scale."""
    if scale == SQUARE:
        return size, size
    if scale == NATIVE:
        return height, width
    ratio = scale / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISSOCK, "a socket"))


def special_file_kind(path):
    """What special file `path` is (links followed: x.png -> /dev/zero), e.g. "a FIFO"; None for a regular file.
    Opening one could block forever (a FIFO) or never end (/dev/zero), so such files are never opened."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing or unreachable: opening it fails at once, and says so
    return next((kind for is_kind, kind in SPECIAL_FILES if is_kind(mode)), None)


def decode_image_file(path, flags, max_pixels):
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(f"{path}: {kind}, not an image file (not opened)")
    # cv2.imread cannot open non-ASCII paths on some platforms; decoding the bytes always works.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if not data.size:
        return None
    check_pixels(path, data, max_pixels)  # from the header, before cv2 allocates the decoded image
    return cv2.imdecode(data, flags)


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


def _png(b):
    if len(b) >= 24 and bytes(b[12:16]) == b"IHDR":
        return struct.unpack(">II", b[16:24])
    return None


def _jpeg(b):
    i = 2
    while i + 9 <= len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", b[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: frame header
            h, w = struct.unpack(">HH", b[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def _bmp(b):
    if len(b) < 26:
        return None
    dib = struct.unpack("<I", b[14:18])[0]
    if dib == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", b[18:22])
    w, h = struct.unpack("<ii", b[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _tiff(b):
    endian = "<" if bytes(b[:2]) == b"II" else ">"
    if struct.unpack(endian + "H", b[2:4])[0] != 42:
        return None  # BigTIFF (43) and others: unknown
    offset = struct.unpack(endian + "I", b[4:8])[0]
    if offset + 2 > len(b):
        return None
    n = struct.unpack(endian + "H", b[offset:offset + 2])[0]
    size = {}
    for k in range(n):
        e = offset + 2 + 12 * k
        if e + 12 > len(b):
            return None
        tag, typ = struct.unpack(endian + "HH", b[e:e + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            size[tag] = struct.unpack(endian + ("H" if typ == 3 else "I"), b[e + 8:e + 10 if typ == 3 else e + 12])[0]
    return (size[256], size[257]) if len(size) == 2 else None


def header_size(data):
    """(width, height) from a PNG/JPEG/BMP/TIFF file's bytes (any buffer; only the header is parsed, nothing is
    decoded); None when the format is unknown or the header is unreadable."""
    b = memoryview(data).cast("B")
    head = bytes(b[:8])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(b)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(b)
        if head.startswith(b"BM"):
            return _bmp(b)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(b)
    except struct.error:
        return None
    return None


def check_pixels(path, data, max_pixels=DEFAULT_MAX_PIXELS):
    """ValueError naming the file when its header is unknown or it holds more than `max_pixels` pixels."""
    size = header_size(data)
    if size is None:
        raise ValueError(f"cannot read image file {path} (not a readable PNG, JPEG, BMP or TIFF header)")
    w, h = size
    if w * h > max_pixels:
        raise ValueError(f"image {path} is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                         f"{max_pixels / 1e6:.1f} (raise it with --max_pixels)")
    return size
