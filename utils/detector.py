"""Reading and scoring images with a trained pair: the one read -> predict path of detect.py, evaluate.py,
training's validation and calibration, the ONNX export and the benchmark.

    detector = Detector.from_checkpoint("checkpoints/", "DRAEM_test_0.0001_20_bs8_coil_")   # load once
    result = detector.score(rgb_image)   # numpy (H, W, 3) or a batch -> score, anomaly_map, verdict per image

`read_image`, the one reader (training's too): 8/16-bit, grey/RGB/RGBA, jpg/png/bmp/tif -> float RGB in [0, 1] at
a working scale ("square": size x size; "native": its own pixels; N: the longer side N px), after the pixel count
in the file's header is checked against `max_pixels`. The image is covered with size x size tiles (a "square"
image is one) that go through model/model_unet.py's `Scorer`; overlaps (a quarter of a tile) are blended by a
raised-cosine window, normalised, since a network is least reliable near a tile edge where it sees zero padding.
Images smaller than a tile are padded (reflection, bottom and right) and cropped back: never stretched.

    >>> image = torch.rand(3, 50, 300)
    >>> out = stitch(image, lambda tiles: (tiles[:, 0], None), tile=64)
    >>> out["anomaly_map"].shape, bool(torch.allclose(out["anomaly_map"], image[0], atol=1e-6))
    (torch.Size([50, 300]), True)
"""
import logging
import math
import struct

import cv2
import numpy as np
import torch

from model.feature_prior import PriorFusion
from model.model_unet import Scorer
from utils.checkpoint import load_pair
from utils.config import Config

log = logging.getLogger(__name__)

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


def decode_image_file(path, flags, max_pixels):
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


def pad_to_tile(image, tile):
    """(C, H, W) -> (C, max(H, tile), max(W, tile)): reflection at the bottom and right, so the original
    pixels keep their coordinates. Works for any dtype; repeats the reflection when the image is tiny."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(0, tile - h), max(0, tile - w)
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-pixel side has nothing to reflect
    padded = np.pad(image.numpy(), ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
    return torch.from_numpy(padded)


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


def default_overlap(tile):
    return tile // 4


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of `tile` pixels covering [0, length) (length >= tile) with at least `overlap`
    pixels of overlap; the stride is spread evenly, so the last tile ends exactly at `length`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(height, width, tile, overlap):
    """(y, x) of the top-left corners of every tile, row by row."""
    return [(y, x) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def count_tiles(height, width, tile, overlap=None):
    """How many tiles an image of height x width at the working scale is cut into."""
    overlap = default_overlap(tile) if overlap is None else overlap
    return len(tile_grid(max(height, tile), max(width, tile), tile, overlap))


def blend_window(tile, overlap):
    """1-D weights (tile,): a raised-cosine ramp over `overlap` pixels at each end, 1 in between, > 0 everywhere."""
    w = torch.ones(tile)
    if overlap > 0:
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap) + 0.5) / overlap)  # (overlap,) in (0, 1)
        w[:overlap] = ramp
        w[tile - overlap:] = torch.minimum(w[tile - overlap:], ramp.flip(0))
    return w


def _axis_weights(length, tile, overlap, window):
    """Sum of the 1-D windows of all tiles along one axis: (length,)."""
    total = torch.zeros(length)
    for s in tile_starts(length, tile, overlap):
        total[s:s + tile] += window
    return total


class _Canvas:
    """One image's tiles and the sums their outputs are blended into (fp32 on `device`)."""

    def __init__(self, image, tile, overlap, with_reconstruction, device):
        self.h, self.w = image.shape[-2:]
        self.padded = pad_to_tile(image, tile)
        ph, pw = self.padded.shape[-2:]
        self.grid = tile_grid(ph, pw, tile, overlap)
        # one tile covers the image: its output as it is; else the blend window (module docstring)
        window = blend_window(tile, overlap) if len(self.grid) > 1 else torch.ones(tile)  # (tile,)
        self.win2d = (window[:, None] * window[None, :]).to(device)  # (tile, tile)
        # the grid is a product of row and column starts, so the summed 2-D windows are an outer product
        self.weight = (_axis_weights(ph, tile, overlap, window)[:, None]
                       * _axis_weights(pw, tile, overlap, window)[None]).to(device)  # (pH, pW), > 0
        self.map = torch.zeros(ph, pw, device=device)
        self.rec = torch.zeros(3, ph, pw, device=device) if with_reconstruction else None
        self.tile = tile

    def add(self, y, x, amap, rec):
        t = self.tile
        self.map[y:y + t, x:x + t] += amap.float() * self.win2d
        if self.rec is not None:
            self.rec[:, y:y + t, x:x + t] += rec.float() * self.win2d

    def result(self):
        self.map /= self.weight  # in place: no second image-sized copy
        if self.rec is not None:
            self.rec /= self.weight
        return self.map[:self.h, :self.w], None if self.rec is None else self.rec[:, :self.h, :self.w]


@torch.inference_mode()
def stitch(image, tile_fn, tile, overlap=None, tile_batch=16, with_reconstruction=False, device=None):
    """Run `tile_fn` on the tiles of `image` (3, H, W) and blend the outputs into whole-image maps.

    tile_fn: tiles (B, 3, tile, tile) on `device` -> (anomaly maps (B, tile, tile), reconstructions or None), at
    most `tile_batch` tiles at a time. Returns {"anomaly_map": (H, W), "reconstruction": (3, H, W) or None}, fp32
    on `device` (default: the CPU)."""
    return stitch_all([image], tile_fn, tile, overlap, tile_batch, with_reconstruction, device)[0]


def stitch_all(images, tile_fn, tile, overlap=None, tile_batch=16, with_reconstruction=False, device=None):
    """`stitch` for a list of images, their tiles batched together in order (a batch of "square" images is one
    forward pass): a list of `stitch` results."""
    overlap = default_overlap(tile) if overlap is None else overlap
    device = torch.device("cpu") if device is None else device
    canvases = [_Canvas(im, tile, overlap, with_reconstruction, device) for im in images]
    jobs = [(c, y, x) for c in canvases for y, x in c.grid]
    for i in range(0, len(jobs), tile_batch):
        chunk = jobs[i:i + tile_batch]
        tiles = torch.stack([c.padded[:, y:y + tile, x:x + tile] for c, y, x in chunk]).to(device)  # (B, 3, t, t)
        maps, recs = tile_fn(tiles)
        for j, (c, y, x) in enumerate(chunk):
            c.add(y, x, maps[j], None if recs is None else recs[j])
    return [dict(zip(("anomaly_map", "reconstruction"), c.result())) for c in canvases]


@torch.inference_mode()
def predict(scorer, images, tile, device, tile_batch=16, with_reconstruction=True):
    """Images (3, H_i, W_i) in [0, 1] at the working scale -> dict of lists, one entry per image: reconstruction
    (3, H, W) (None unless `with_reconstruction`), anomaly_map (H, W) and score (0-d), fp32 on `device`."""
    def run(tiles):  # (B, 3, tile, tile) -> (B, tile, tile), (B, 3, tile, tile)
        rec, amap = scorer(tiles)
        return amap, rec
    outs = stitch_all(images, run, tile, tile_batch=tile_batch, with_reconstruction=with_reconstruction,
                      device=device)
    return {"reconstruction": [o["reconstruction"] for o in outs], "anomaly_map": [o["anomaly_map"] for o in outs],
            "score": [scorer.score(o["anomaly_map"][None])[0] for o in outs]}


@torch.inference_mode()
def raw_maps(map_fn, images, tile, device, tile_batch=16):
    """Whole-image maps of `map_fn` (tiles (B, 3, t, t) -> (B, t, t)), tiled and stitched as `predict` does:
    images (3, H_i, W_i), uint8 or float in [0, 1] -> a list of (H_i, W_i) fp32 on `device`."""
    images = [im.float() / 255 if im.dtype == torch.uint8 else im for im in images]
    outs = stitch_all(images, lambda tiles: (map_fn(tiles), None), tile, tile_batch=tile_batch, device=device)
    return [o["anomaly_map"] for o in outs]


def image_scores(scorer, images, tile, device, tile_batch=16):
    """(N,) scores of uint8 images (3, H_i, W_i) at the working scale, one image at a time as detect.py scores
    them (the model in eval mode meanwhile; its training mode is restored)."""
    was_training = scorer.training
    scorer.eval()
    scores = [predict(scorer, [im.float() / 255], tile, device, tile_batch, False)["score"][0].cpu() for im in images]
    scorer.train(was_training)
    return torch.stack(scores)


class Detector:
    """A loaded checkpoint pair on a device, with what the checkpoint says about size, scale, score rule and
    threshold. `bs`: tiles per forward pass; `max_pixels`: larger image files are refused (from the header)."""

    def __init__(self, model, meta, device, amp_dtype=None, bs=16, max_pixels=DEFAULT_MAX_PIXELS):
        self.device, self.bs, self.max_pixels = torch.device(device), bs, max_pixels
        prior = PriorFusion.from_state(meta["prior"]).to(self.device) if meta.get("prior") else None
        self.scorer = Scorer.from_config(model.to(self.device).eval(), meta["config"], amp_dtype, prior).eval()
        self.meta = meta
        self.size = int(meta["config"]["size"])
        self.scale = scale_of(meta["config"])  # "square" (whole image resized), "native" or a longer side N
        self.threshold = meta["calibration"].get("threshold")
        self.name = None  # the pair's name, when loaded from files

    @classmethod
    def from_checkpoint(cls, checkpoint_path, base_model_name, device="cpu", amp_dtype=None, **kwargs):
        model, meta = load_pair(checkpoint_path, base_model_name)
        detector = cls(model, meta, device, amp_dtype, **kwargs)
        detector.name = base_model_name
        return detector

    @property
    def teaching(self):
        """The number of the pair's last teaching (utils/teach.py `train.py --add_good`), 0 when never taught."""
        teachings = (self.meta.get("prior") or {}).get("teachings") or []
        return teachings[-1]["teaching"] if teachings else 0

    def pair_label(self):
        """Which pair scores, for pictures and reports: its name and, when taught, its last teaching."""
        teachings = (self.meta.get("prior") or {}).get("teachings") or []
        label = self.name or "the pair"
        if teachings:
            t = teachings[-1]
            label += f" (teaching {t['teaching']}: +{t['n_images']} good images, {t['time'][:16].replace('T', ' ')})"
        return label

    def read(self, path):
        """An image file as (3, H, W) in [0, 1] at this checkpoint's working scale."""
        return read_image(path, self.size, self.scale, self.max_pixels)

    def predict(self, images, with_reconstruction=True):
        """Images from `read` -> `predict`'s dict of per-image lists, on self.device."""
        return predict(self.scorer, list(images), self.size, self.device, self.bs, with_reconstruction)

    def verdict(self, score):
        return "n/a" if self.threshold is None else "NG" if score > self.threshold else "OK"

    def score(self, images):
        """Numpy in, numpy out: one RGB image (H, W) / (H, W, 1|3|4), uint8 / uint16 / float in [0, 1], any size,
        or a batch (a list, or (N, H, W, C)) -> dict(score (N,) float32, anomaly_map: a list of (H, W) float32 at
        the working scale, verdict [N x "OK" / "NG" / "n/a"]), one entry per image, also for a single image."""
        single = isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] <= 4))
        tensors = [image_to_tensor(im, self.size, scale=self.scale) for im in ([images] if single else images)]
        out = self.predict(tensors, with_reconstruction=False)
        scores = np.array([float(s) for s in out["score"]], dtype=np.float32)
        return {"score": scores, "anomaly_map": [m.cpu().numpy() for m in out["anomaly_map"]],
                "verdict": [self.verdict(float(s)) for s in scores]}

    def batches(self, items, read=None, image_of=None):
        """Groups of (item, read(item)) worth up to `bs` tiles, at least one image each: `bs` square images, or
        one large image, so memory stays bounded by the tile batch. read: default `self.read`; an item it cannot
        read (ValueError) is skipped with a warning. image_of(record): the image in what `read` returns."""
        read = self.read if read is None else read
        group, tiles = [], 0
        for item in items:
            try:
                record = read(item)
            except ValueError as e:
                log.warning("skipping %s", e)
                continue
            n = count_tiles(*(record if image_of is None else image_of(record)).shape[-2:], self.size)
            if group and tiles + n > self.bs:
                yield group
                group, tiles = [], 0
            group.append((item, record))
            tiles += n
        if group:
            yield group

    def score_files(self, files):
        """(N,) scores of image files, read and scored as detect.py does; unreadable files are skipped with a
        warning."""
        scores = []
        for group in self.batches(files):
            scores += [float(x) for x in self.predict([im for _, im in group], with_reconstruction=False)["score"]]
        return np.array(scores)
