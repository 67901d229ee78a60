"""Tiles: an image larger than the network's tile is cut into overlapping tiles, scored in batches and stitched
back with a blend window; a square image at the training size is one tile. `predict`, `raw_maps` and
`image_scores` are the one tiled scoring path around model/model_unet.py's `Scorer`."""
import math

import numpy as np
import torch


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
    """One image's tiles and the sums their outputs are blended into (fp32 on `device`): one map per name in
    `names`, and the reconstruction when asked."""

    def __init__(self, image, tile, overlap, with_reconstruction, device, names=("anomaly_map",)):
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
        self.maps = {name: torch.zeros(ph, pw, device=device) for name in names}
        self.rec = torch.zeros(3, ph, pw, device=device) if with_reconstruction else None
        self.tile = tile

    def add(self, y, x, maps, rec):
        t = self.tile
        for name, amap in maps.items():
            self.maps[name][y:y + t, x:x + t] += amap.float() * self.win2d
        if self.rec is not None:
            self.rec[:, y:y + t, x:x + t] += rec.float() * self.win2d

    def result(self):
        out = {}
        for name, amap in self.maps.items():
            amap /= self.weight  # in place: no second image-sized copy
            out[name] = amap[:self.h, :self.w]
        if self.rec is not None:
            self.rec /= self.weight
        out["reconstruction"] = None if self.rec is None else self.rec[:, :self.h, :self.w]
        return out


@torch.inference_mode()
def stitch(image, tile_fn, tile, overlap=None, tile_batch=16, with_reconstruction=False, device=None):
    """Run `tile_fn` on the tiles of `image` (3, H, W) and blend the outputs into whole-image maps.

    tile_fn: tiles (B, 3, tile, tile) on `device` -> (anomaly maps (B, tile, tile), reconstructions or None), at
    most `tile_batch` tiles at a time. Returns {"anomaly_map": (H, W), "reconstruction": (3, H, W) or None}, fp32
    on `device` (default: the CPU)."""
    return stitch_all([image], tile_fn, tile, overlap, tile_batch, with_reconstruction, device)[0]


def stitch_all(images, tile_fn, tile, overlap=None, tile_batch=16, with_reconstruction=False, device=None,
               names=("anomaly_map",)):
    """`stitch` for a list of images, their tiles batched together in order (a batch of "square" images is one
    forward pass): a list of `stitch` results. names: what tile_fn's first output holds, one map per name (a dict
    {name: (B, tile, tile)} when there are several); each is stitched under its name."""
    overlap = default_overlap(tile) if overlap is None else overlap
    device = torch.device("cpu") if device is None else device
    canvases = [_Canvas(im, tile, overlap, with_reconstruction, device, names) for im in images]
    jobs = [(c, y, x) for c in canvases for y, x in c.grid]
    for i in range(0, len(jobs), tile_batch):
        chunk = jobs[i:i + tile_batch]
        tiles = torch.stack([c.padded[:, y:y + tile, x:x + tile] for c, y, x in chunk]).to(device)  # (B, 3, t, t)
        maps, recs = tile_fn(tiles)
        maps = maps if isinstance(maps, dict) else {names[0]: maps}
        for j, (c, y, x) in enumerate(chunk):
            c.add(y, x, {name: m[j] for name, m in maps.items()}, None if recs is None else recs[j])
    return [c.result() for c in canvases]


HALVES = ("draem", "novelty")  # the two evidences of a pair with a feature prior, each also scored alone


def _tile_maps(scorer):
    """tile_fn for `stitch_all`: DRAEM's map of each tile, and with a per-tile prior (pairs before the aspect-kept
    default) the novelty half's map and the fused one, fused per tile as those pairs were calibrated."""
    prior = scorer.prior

    def run(tiles):  # (B, 3, t, t) -> ({name: (B, t, t)}, (B, 3, t, t))
        rec, amap = scorer.networks(tiles)
        maps = {"draem": amap}
        if prior is not None and prior.per_tile:
            novelty = prior.novelty(tiles)
            maps.update(novelty=prior.alone(novelty), anomaly_map=prior.fuse(novelty, amap))
        return maps, rec
    return run


def _whole_maps(scorer, images, device, batch, with_reconstruction):
    """`stitch_all`'s results with DRAEM on each whole image at once (fully convolutional): padded by reflection at
    the bottom and right to multiples of 32 (its five poolings), the outputs cropped back; images of one padded
    shape are run together, `batch` at a time."""
    outs = [None] * len(images)
    groups = {}
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        groups.setdefault((-(-h // 32) * 32, -(-w // 32) * 32), []).append(i)
    run = _tile_maps(scorer)
    for (ph, pw), index in groups.items():
        for start in range(0, len(index), batch):
            part = index[start:start + batch]
            x = torch.stack([_pad_to(images[i], ph, pw) for i in part]).to(device)  # (B, 3, pH, pW)
            maps, rec = run(x)
            for j, i in enumerate(part):
                h, w = images[i].shape[-2:]
                outs[i] = {name: m[j, :h, :w].float() for name, m in maps.items()}
                outs[i]["reconstruction"] = rec[j, :, :h, :w].float() if with_reconstruction else None
    return outs


def _pad_to(image, height, width):
    """(C, H, W) -> (C, height, width), reflected at the bottom and right (edge for a 1-pixel side)."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    mode = "reflect" if min(h, w) > 1 else "edge"
    return torch.from_numpy(np.pad(image.numpy(), ((0, 0), (0, height - h), (0, width - w)), mode=mode))


@torch.inference_mode()
def predict(scorer, images, tile, device, tile_batch=16, with_reconstruction=True, halves=False, sharpen=True):
    """Images (3, H_i, W_i) in [0, 1] at the working scale -> dict of lists, one entry per image: reconstruction
    (3, H, W) (None unless `with_reconstruction`), anomaly_map (H, W) and score (0-d), fp32 on `device`.

    DRAEM sees tiles, stitched; a feature prior with a side sees each whole image once and is fused with the
    stitched DRAEM map. halves: also each half alone (`HALVES`), as <half>_map and <half>_score: DRAEM's own map,
    and the novelty's (model/feature_prior.py PriorFusion.alone); the novelty's are None without a prior.
    sharpen: the maps guided by the image (`scorer.guide`), as shown and measured; False where only scores count."""
    prior = scorer.prior
    per_tile = prior is not None and prior.per_tile
    names = ("draem", "novelty", "anomaly_map") if per_tile else ("draem",)
    if tile is None:  # DRAEM on whole images (fully convolutional), no tiles
        outs = _whole_maps(scorer, images, device, tile_batch, with_reconstruction)
    else:
        outs = stitch_all(images, _tile_maps(scorer), tile, tile_batch=tile_batch,
                          with_reconstruction=with_reconstruction, device=device, names=names)
    for out, image in zip(outs, images):
        if prior is None:
            out.update(anomaly_map=out["draem"], novelty=None)
        elif not per_tile:  # the whole working image through the prior, (1, H, W)
            novelty = prior.novelty(image[None].to(device))
            out.update(anomaly_map=prior.fuse(novelty, out["draem"][None])[0], novelty=prior.alone(novelty)[0])
    result = {"reconstruction": [o["reconstruction"] for o in outs], "anomaly_map": [o["anomaly_map"] for o in outs],
              "score": [scorer.score(o["anomaly_map"][None])[0] for o in outs]}
    if halves:
        for half in HALVES:
            maps = [o[half] for o in outs]
            result[f"{half}_map"] = maps
            result[f"{half}_score"] = [None if m is None else scorer.score(m[None])[0] for m in maps]
    if scorer.sharpens and sharpen:  # the maps shown follow the image's edges; the scores are those above
        for i, image in enumerate(images):
            x = image[None].to(device)  # (1, 3, H, W)
            fine = scorer.prior.fine_map(x) if scorer.refines else None  # once per image, for the prior's maps
            for key in ("anomaly_map",) + tuple(f"{h}_map" for h in HALVES if halves):
                m = result[key][i]
                if m is not None:  # DRAEM's own map: its edges guided, the prior's fine evidence left out
                    result[key][i] = scorer.sharpen(m[None], x, fine, refine=key != "draem_map")[0]
    return result


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
    scores = [predict(scorer, [im.float() / 255], tile, device, tile_batch, False, sharpen=False)["score"][0].cpu()
              for im in images]
    scorer.train(was_training)
    return torch.stack(scores)
