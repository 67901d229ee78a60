"""Image dimensions from the file header (PNG, JPEG, BMP, TIFF), read before anything is decoded.

A 1 MB PNG can decode to 32000 x 32000 pixels (4 GB): `read_image` refuses images above `MAX_PIXELS` from the
header alone. The default is PIL's `Image.MAX_IMAGE_PIXELS` (89,478,485 pixels, about 9459 x 9459); each script
has `--max_pixels` to raise it.
"""
import struct

from utils.runtime import positive_int

DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS = DEFAULT_MAX_PIXELS


def add_max_pixels_flag(parser, what="refuse"):
    """The scripts' --max_pixels flag (parsed value: an int > 0)."""
    parser.add_argument("--max_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"{what} images with more pixels than this (read from the header, before decoding)")


def set_max_pixels(n):
    """Set the limit for this process (the scripts' --max_pixels)."""
    global MAX_PIXELS
    MAX_PIXELS = int(n)


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


def check_pixels(path, data):
    """ValueError naming the file when its header is unknown or it holds more than MAX_PIXELS pixels."""
    size = header_size(data)
    if size is None:
        raise ValueError(f"cannot read image file {path} (not a readable PNG, JPEG, BMP or TIFF header)")
    w, h = size
    if w * h > MAX_PIXELS:
        raise ValueError(f"image {path} is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                         f"{MAX_PIXELS / 1e6:.1f} (raise it with --max_pixels)")
    return size
