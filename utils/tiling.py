"""Working scale and tiles: how images that are not small squares are read, cut and stitched back.

The working scale of a checkpoint (`--scale` at training, stored in its config):
    "square"  the whole image resized to size x size (the paper; old checkpoints and the authors' .pckl files);
    "native"  the image's own pixels;
    N (int)   resized, keeping the aspect ratio, so that the longer side is N pixels.
With "native" / N the network sees size x size tiles: training takes random crops (utils/crops.py), inference
covers the whole image with overlapping tiles and stitches one anomaly map at the working scale (`stitch`).

Tiles overlap by a quarter of the tile (`default_overlap`). Overlaps are blended by a weighted average: each tile's
output is weighted by a separable window that is 1 in the middle and falls off along a raised cosine over the
overlap band at each edge (to a small positive value at the edge itself, so the image's own borders, covered by
one tile only, keep their values). A network's output is least reliable near a tile edge, where it sees zero
padding instead of the neighbouring pixels; the window lets the neighbouring tile's interior take over smoothly.
Since the window never reaches 0 and the weights are normalised, a constant output stays exactly constant across
seams (up to float rounding), and a position-independent output is reproduced without seams.

Images smaller than a tile are padded (reflection, at the bottom and right) and the output is cropped back:
never stretched.

Example, with an identity "network" whose map is the image's first channel:
    >>> import torch
    >>> image = torch.rand(3, 50, 300)
    >>> out = stitch(image, lambda tiles: (tiles[:, 0], None), tile=64)
    >>> out["anomaly_map"].shape, bool(torch.allclose(out["anomaly_map"], image[0], atol=1e-6))
    (torch.Size([50, 300]), True)
"""
import argparse
import math

import cv2
import numpy as np
import torch

SQUARE, NATIVE = "square", "native"
SCALE_HELP = ("square = each image resized to --size x --size (the paper); native = the images' own pixels; N = "
              "resized so that the longer side is N px, aspect kept. native / N train on random --size crops, and "
              "detect.py / evaluate.py cover the whole image with overlapping tiles (stored in the checkpoint)")


def scale_arg(s):
    """argparse type of --scale: "square", "native" or an integer N >= 32 (the longer side in pixels)."""
    if s in (SQUARE, NATIVE):
        return s
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be square, native or a longer side in pixels, got {s}") from None
    if v < 32:
        raise argparse.ArgumentTypeError(f"a longer side of at least 32 pixels, got {s}")
    return v


def scale_of(config):
    """The working scale a checkpoint config records; checkpoints from before --scale are "square"."""
    scale = config.get("scale", SQUARE)
    return scale if scale in (SQUARE, NATIVE) else int(scale)


def is_tiled(scale):
    return scale != SQUARE


def working_shape(height, width, scale, size):
    """(H, W) an image of height x width pixels has at the working scale."""
    if scale == SQUARE:
        return size, size
    if scale == NATIVE:
        return height, width
    ratio = scale / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def to_working_scale(image, scale, size):
    """Float image (3, h, w) -> (3, H, W) at the working scale (area interpolation, as read_image uses)."""
    h, w = image.shape[-2:]
    shape = working_shape(h, w, scale, size)
    if shape == (h, w):
        return image
    hwc = image.permute(1, 2, 0).numpy()  # cv2 wants (h, w, 3)
    out = cv2.resize(hwc, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


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


@torch.inference_mode()
def stitch(image, tile_fn, tile, overlap=None, tile_batch=16, with_reconstruction=False, device=None):
    """Run `tile_fn` on overlapping tiles of `image` and blend the outputs into whole-image maps.

    image: (3, H, W) float on the CPU, any H, W. tile_fn: tiles (B, 3, tile, tile) on `device` ->
    (anomaly maps (B, tile, tile), reconstructions (B, 3, tile, tile) or None). Only `tile_batch` tiles are
    on the device at a time, so the network's memory does not grow with the image; the accumulators are one
    (H, W) map (+ (3, H, W) with `with_reconstruction`). Returns {"anomaly_map": (H, W), "reconstruction":
    (3, H, W) or None}, fp32 on `device` (default: the CPU).
    """
    overlap = default_overlap(tile) if overlap is None else overlap
    device = torch.device("cpu") if device is None else device
    h, w = image.shape[-2:]
    padded = pad_to_tile(image, tile)
    ph, pw = padded.shape[-2:]
    window = blend_window(tile, overlap)  # (tile,)
    win2d = (window[:, None] * window[None, :]).to(device)  # (tile, tile)
    map_sum = torch.zeros(ph, pw, device=device)
    rec_sum = torch.zeros(3, ph, pw, device=device) if with_reconstruction else None
    grid = tile_grid(ph, pw, tile, overlap)
    for i in range(0, len(grid), tile_batch):
        corners = grid[i:i + tile_batch]
        tiles = torch.stack([padded[:, y:y + tile, x:x + tile] for y, x in corners]).to(device)  # (B, 3, t, t)
        maps, recs = tile_fn(tiles)
        for j, (y, x) in enumerate(corners):
            map_sum[y:y + tile, x:x + tile] += maps[j].float() * win2d
            if rec_sum is not None:
                rec_sum[:, y:y + tile, x:x + tile] += recs[j].float() * win2d
    # The grid is a product of row and column starts, so the summed 2-D windows are an outer product.
    weight = (_axis_weights(ph, tile, overlap, window)[:, None] * _axis_weights(pw, tile, overlap, window)[None])
    weight = weight.to(device)  # (pH, pW), > 0 everywhere
    map_sum /= weight  # in place: no second image-sized copy
    if rec_sum is not None:
        rec_sum /= weight
    return {"anomaly_map": map_sum[:h, :w], "reconstruction": None if rec_sum is None else rec_sum[:, :h, :w]}


def count_tiles(height, width, tile, overlap=None):
    """How many tiles `stitch` runs for an image of height x width at the working scale."""
    overlap = default_overlap(tile) if overlap is None else overlap
    return len(tile_grid(max(height, tile), max(width, tile), tile, overlap))

