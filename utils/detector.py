"""Scoring images with a trained pair: one read -> predict path for detect.py, evaluate.py, validation,
calibration, the ONNX export and the benchmark.

`Scorer` is the one scoring graph: image -> reconstruction and anomaly map (the softmax's anomaly channel); its
`score` is the image score rule, whose parameters (kernel, top_fraction) are attributes stored in every
checkpoint's config.

    detector = Detector.from_checkpoint("checkpoints/", "DRAEM_test_0.0001_20_bs8_coil_")   # load once
    result = detector.score(rgb_image)   # numpy (H, W, 3) or a batch -> score, anomaly_map, verdict per image

An image is read at its checkpoint's working scale (utils/data_loader.py `read_image`) and covered with
size x size tiles; a "square" image is exactly one tile. Where tiles overlap (by a quarter of the tile) their
outputs are blended by a separable window that is 1 in the middle and falls off along a raised cosine over the
overlap band (to a small positive value at the edge, so the image's own borders keep their values): a network's
output is least reliable near a tile edge, where it sees zero padding instead of the neighbouring pixels. The
weights are normalised, so a constant output stays constant across seams. Images smaller than a tile are padded
(reflection, bottom and right) and the output is cropped back: never stretched.

    >>> import torch
    >>> image = torch.rand(3, 50, 300)
    >>> out = stitch(image, lambda tiles: (tiles[:, 0], None), tile=64)
    >>> out["anomaly_map"].shape, bool(torch.allclose(out["anomaly_map"], image[0], atol=1e-6))
    (torch.Size([50, 300]), True)
"""
import contextlib
import logging
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checkpoint import load_pair
from utils.data_loader import DEFAULT_MAX_PIXELS, image_to_tensor, pad_to_tile, read_image, scale_of

log = logging.getLogger(__name__)


SCORE_KERNEL = 21  # the authors' evaluation: mean filter 21x21, stride 1, then max


def anomaly_map(seg_logits):
    """Anomaly probability per pixel: softmax channel 1 of the discriminative output.

    seg_logits: (B, 2, H, W) -> (B, H, W) in [0, 1].
    """
    return torch.softmax(seg_logits.float(), dim=1)[:, 1]


def score_kernel(size, scaled=True):
    """Mean-filter size for `size`-pixel images: the authors' 21 px at 256 px, kept at the same share of the image
    (odd, >= 3) when `scaled`; 21 otherwise. At 128 px: 11, so a small defect is not averaged away."""
    if not scaled:
        return SCORE_KERNEL
    return max(3, int(round(SCORE_KERNEL * size / 256 / 2)) * 2 + 1)


def image_score(amap, kernel=SCORE_KERNEL, top_fraction=0.0):
    """Image-level score. amap: (B, H, W) -> (B,).

    top_fraction 0 (the authors' rule): max of the map after a kernel x kernel mean filter (stride 1, zero
    padding), as `avg_pool2d(..., 21, stride=1, padding=10)` then max, so a single hot pixel does not make an
    image anomalous, but a defect of ~kernel x kernel px does.
    top_fraction > 0: the mean of the `top_fraction` hottest pixels of the raw map (at least one pixel); it does
    not depend on the defect's shape (a thin crack fills little of a square window).
    """
    if top_fraction > 0:
        flat = amap.flatten(1)  # (B, H*W)
        k = max(1, int(flat.shape[1] * top_fraction + 0.5))  # rounded; int() also when tracing for ONNX
        return flat.topk(k, dim=1).values.mean(dim=1)
    # A zero-padded box mean is separable: a k x 1 then a 1 x k mean equals the k x k one (to float rounding)
    # at 2k instead of k*k operations per pixel.
    pad = kernel // 2
    smoothed = F.avg_pool2d(amap[:, None], (kernel, 1), stride=1, padding=(pad, 0))  # (B, 1, H, W)
    smoothed = F.avg_pool2d(smoothed, (1, kernel), stride=1, padding=(0, pad))
    return smoothed.flatten(1).max(dim=1).values


def autocast(device, dtype):
    """torch.autocast for `dtype` on `device`, or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Scorer(nn.Module):
    """A DRAEM module and its score rule: images (B, 3, H, W) in [0, 1] -> reconstruction (B, 3, H, W) in [0, 1]
    and anomaly map (B, H, W), fp32; `score(maps)` -> (B,).

    kernel, top_fraction: `image_score`'s rule; amp_dtype: autocast of the networks (None: fp32). The map and the
    score are always computed in fp32.
    """

    def __init__(self, draem, kernel=SCORE_KERNEL, top_fraction=0.0, amp_dtype=None):
        super().__init__()
        self.draem, self.kernel, self.top_fraction, self.amp_dtype = draem, kernel, top_fraction, amp_dtype

    @classmethod
    def from_config(cls, draem, config, amp_dtype=None):
        """The rule a checkpoint's config records (the authors' pairs: 21 px, max of the filtered map)."""
        return cls(draem, int(config.get("score_kernel", SCORE_KERNEL)),
                   float(config.get("score_top_fraction", 0.0)), amp_dtype)

    def forward(self, images):
        with autocast(images.device, self.amp_dtype):
            rec, logits = self.draem(images)
        return rec.float().clamp(0, 1), anomaly_map(logits)  # fp32 softmax

    def score(self, maps):
        return image_score(maps, self.kernel, self.top_fraction)


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

    tile_fn: tiles (B, 3, tile, tile) on `device` -> (anomaly maps (B, tile, tile), reconstructions or None).
    Only `tile_batch` tiles are on the device at a time. Returns {"anomaly_map": (H, W), "reconstruction":
    (3, H, W) or None}, fp32 on `device` (default: the CPU).
    """
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
        self.scorer = Scorer.from_config(model.to(self.device).eval(), meta["config"], amp_dtype).eval()
        self.meta = meta
        self.size = int(meta["config"]["size"])
        self.scale = scale_of(meta["config"])  # "square" (whole image resized), "native" or a longer side N
        self.threshold = meta["calibration"].get("threshold")

    @classmethod
    def from_checkpoint(cls, checkpoint_path, base_model_name, device="cpu", amp_dtype=None, **kwargs):
        model, meta = load_pair(checkpoint_path, base_model_name)
        return cls(model, meta, device, amp_dtype, **kwargs)

    def read(self, path):
        """An image file as (3, H, W) in [0, 1] at this checkpoint's working scale."""
        return read_image(path, self.size, self.scale, self.max_pixels)

    def predict(self, images, with_reconstruction=True):
        """Images from `read` -> `predict`'s dict of per-image lists, on self.device."""
        return predict(self.scorer, list(images), self.size, self.device, self.bs, with_reconstruction)

    def verdict(self, score):
        if self.threshold is None:
            return "n/a"
        return "NG" if score > self.threshold else "OK"

    def score(self, images):
        """Numpy images in, numpy results out: one image (H, W) / (H, W, 1|3|4), or a batch (a list of such, or
        an (N, H, W, C) array), RGB, uint8 / uint16 / float in [0, 1], any size (brought to the working scale as
        detect.py does). Returns dict(score (N,) float32, anomaly_map: a list of (H, W) float32 maps at the working
        scale, verdict [N x "OK" / "NG" / "n/a"]), one entry per image, also for a single image.
        """
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
