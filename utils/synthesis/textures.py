"""Where simulated defects get their look: a bank of texture images (DTD in the paper) or procedural textures.

    bank = load_texture_bank("path/to/dtd/images", 256)      # (N, 3, 256, 256) uint8, kept on the device
    tex = procedural_textures(8, 256, 256, generator)         # (8, 3, 256, 256) float in [0, 1]
"""
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from utils.data_loader import list_images
from utils.images.reading import read_image
from utils.perlin import perlin_noise, random_perlin_scales

log = logging.getLogger(__name__)


# Random draws on a `torch.Generator`, shaped for batches: the one place synthesis code gets its randomness.
# torch.Generator is device-bound, so every draw is made on the generator's own device and then moved: the same
# seed gives the same numbers whatever device the images are on.
def rand(generator, *shape, device=None):
    """U[0, 1) of `shape`, drawn on the generator's device, then moved to `device` (None: left there)."""
    gen_device = generator.device if generator is not None else None
    return torch.rand(*shape, generator=generator, device=gen_device).to(device)


def uniform(generator, n, low, high, device, dims=4, channels=1):
    """Per-sample U[low, high), shaped (n, channels, 1, 1) for broadcasting over (n, C, H, W)."""
    u = rand(generator, n, channels, device=device)
    return (low + (high - low) * u).view(n, channels, *([1] * (dims - 2)))


def randint(generator, low, high, n, device):
    """n integers in [low, high), (n,) on `device`."""
    gen_device = generator.device if generator is not None else None
    return torch.randint(low, high, (n,), generator=generator, device=gen_device).to(device)


def _coords(n, h, w, generator, device):
    """Per-sample rotated coordinates u, v (n, 1, H, W), in units of the longer image side."""
    side = max(h, w)
    y = (torch.arange(h, device=device, dtype=torch.float32) / side).view(1, 1, h, 1)
    x = (torch.arange(w, device=device, dtype=torch.float32) / side).view(1, 1, 1, w)
    angle = uniform(generator, n, 0.0, math.pi, device)
    cos, sin = angle.cos(), angle.sin()
    return x * cos + y * sin, y * cos - x * sin


def _fractal(n, h, w, generator, device, octaves=4):
    """Multi-octave Perlin noise normalised per sample to [0, 1], (n, 1, H, W)."""
    base = random_perlin_scales(n, generator, min_exp=0, max_exp=4)
    total = 0
    for o in range(octaves):
        total = total + 0.5 ** o * perlin_noise(n, h, w, (base * 2 ** o).clamp(max=32), generator, device)
    total = total[:, None]
    lo = total.amin(dim=(2, 3), keepdim=True)
    hi = total.amax(dim=(2, 3), keepdim=True)
    return (total - lo) / (hi - lo).clamp_min(1e-6)


def _stripes(n, h, w, generator, device):
    u, _ = _coords(n, h, w, generator, device)
    freq = uniform(generator, n, 2.0, 24.0, device)
    phase = uniform(generator, n, 0.0, 2 * math.pi, device)
    hardness = uniform(generator, n, 1.0, 12.0, device)  # soft waves ... hard bands
    return torch.sigmoid(hardness * torch.sin(2 * math.pi * freq * u + phase))


def _spots(n, h, w, generator, device, count=10):
    # the brightest of `count` Gaussian spots per pixel
    side = max(h, w)
    y = (torch.arange(h, device=device, dtype=torch.float32) / side).view(1, 1, h, 1)
    x = (torch.arange(w, device=device, dtype=torch.float32) / side).view(1, 1, 1, w)
    cy = rand(generator, n, count, device=device)[..., None, None] * (h / side)
    cx = rand(generator, n, count, device=device)[..., None, None] * (w / side)
    radius = 0.02 + 0.13 * rand(generator, n, count, device=device)[..., None, None]
    d2 = (y - cy) ** 2 + (x - cx) ** 2  # (n, count, H, W)
    return torch.exp(-d2 / (2 * radius ** 2)).amax(dim=1, keepdim=True)


def _checker(n, h, w, generator, device):
    u, v = _coords(n, h, w, generator, device)
    freq = uniform(generator, n, 2.0, 16.0, device)
    checker = ((u * freq).floor() + (v * freq).floor()) % 2
    width = uniform(generator, n, 0.05, 0.3, device)
    grid = (((u * freq) % 1 < width) | ((v * freq) % 1 < width)).float()
    use_grid = rand(generator, n, device=device).view(n, 1, 1, 1) < 0.5
    return torch.where(use_grid, grid, checker)


PATTERNS = (_fractal, _stripes, _spots, _checker)


def procedural_textures(batch, height, width, generator, device=None):
    """Anomaly source without a texture folder: (B, 3, H, W) float in [0, 1].

    Per sample one pattern (fractal noise, stripes/bands, spots, checker/grid) at a random angle and frequency,
    mixed with some fractal noise and painted between two random colours.
    """
    kind = randint(generator, 0, len(PATTERNS), batch, device=None).cpu()
    pattern = torch.empty(batch, 1, height, width, device=device)
    for k, make in enumerate(PATTERNS):
        idx = (kind == k).nonzero().flatten()
        if len(idx):
            pattern[idx.to(device)] = make(len(idx), height, width, generator, device)
    mix = uniform(generator, batch, 0.0, 0.4, device)
    pattern = torch.lerp(pattern, _fractal(batch, height, width, generator, device), mix)
    dark = rand(generator, batch, 3, device=device).view(batch, 3, 1, 1)
    light = rand(generator, batch, 3, device=device).view(batch, 3, 1, 1)
    return torch.lerp(dark, light, pattern).clamp(0, 1)


def load_texture_bank(folder, size, max_images=2048, generator=None):
    """All images below `folder` (any depth) as a uint8 tensor (N, 3, size, size); uint8 saves 4x memory.

    More than `max_images` files: a random subset (seeded by `generator`, else seed 0). Unreadable files are
    skipped with a warning.
    """
    files = list_images(folder) if Path(folder).is_dir() else []
    if len(files) > max_images:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        keep = torch.randperm(len(files), generator=generator)[:max_images].sort().values
        log.info("anomaly source %s: using a random %d of %d images", folder, max_images, len(files))
        files = [files[i] for i in keep.tolist()]
    images = []
    for f in files:
        try:
            images.append(read_image(f, size).mul_(255).round_().to(torch.uint8))
        except ValueError as e:
            log.warning("skipping unreadable anomaly source image: %s", e)
    if not images:
        raise FileNotFoundError(f"no images found in anomaly source folder {folder}")
    return torch.stack(images)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as cv2 / PIL grayscale


def luminance(x):
    """(B, 3, H, W) -> (B, 1, H, W)."""
    y = x[:, 0:1] * LUMA[0]
    return y.add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])


def rotate(x, degrees):
    """Rotate each sample of x (B, C, H, W) about its centre by its own angle (B,) in degrees.

    Bilinear with constant 0 outside, like imgaug's Affine(rotate=...). The sampling grid is what
    F.affine_grid would give (written out: 3x faster on CPU); the H/W factors make it a true rotation in pixel
    space when H != W, because grid_sample's coordinates are normalised per axis.
    """
    b, _, h, w = x.shape
    rad = degrees.to(device=x.device, dtype=x.dtype) * (math.pi / 180)
    cos, sin = rad.cos()[:, None], rad.sin()[:, None]  # (B, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).mul_(2 / w).add_(1 / w - 1)  # pixel centres in [-1, 1]
    ys = torch.arange(h, device=x.device, dtype=x.dtype).mul_(2 / h).add_(1 / h - 1)
    grid = torch.empty(b, h, w, 2, device=x.device, dtype=x.dtype)  # where output pixel (y, x) samples from
    torch.add((cos * xs)[:, None, :], (sin * (h / w) * ys)[:, :, None], out=grid[..., 0])
    torch.add((-sin * (w / h) * xs)[:, None, :], (cos * ys)[:, :, None], out=grid[..., 1])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _quantize(x):
    """x (n, C, H, W) in [0, 1] -> its uint8 values as int32 (n*C, H*W), and histograms (n*C, 256). Overwrites x."""
    n, c = x.shape[:2]
    q = x.mul_(255).add_(0.5).clamp_(0, 255).view(n * c, -1).int()  # round; int32: half the traffic of int64
    rows = torch.arange(n * c, device=x.device, dtype=torch.int32)[:, None] * 256
    hist = torch.bincount((q + rows).flatten(), minlength=n * c * 256).view(n * c, 256)  # one call for all
    return q, hist


# -------------------------------------------------------------------------------------------- augmenters
def _gamma(x, g):
    # torchvision: adjust_gamma takes one gamma per call; here each sample and channel draws its own.
    # imgaug GammaContrast((0.5, 2.0), per_channel=True)
    gamma = uniform(g, len(x), 0.5, 2.0, x.device, channels=3)
    return x.clamp_(0, 1).log_().mul_(gamma).exp_()  # = x ** gamma (0 -> 0); a broadcast pow is 4x slower


def _brightness(x, g):
    # torchvision: adjust_brightness scales RGB; imgaug multiplies and adds on Y of YCrCb.
    # imgaug MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): change Y of YCrCb and keep the chroma,
    # so every channel moves by the same amount; the two ops run in random order, as in imgaug.
    n = len(x)
    mul = uniform(g, n, 0.8, 1.2, x.device)
    add = uniform(g, n, -30 / 255, 30 / 255, x.device)
    mul_first = rand(g, n, device=x.device).view(n, 1, 1, 1) < 0.5
    delta = luminance(x).mul_(mul - 1).add_(add * torch.where(mul_first, torch.ones_like(mul), mul))
    return x.add_(delta).clamp_(0, 1)


def _sharpness(x, g):
    # torchvision: adjust_sharpness takes one factor per call (and is a depthwise conv2d, slow on CPU).
    # PIL ImageEnhance.Sharpness(factor U(0, 2)): smooth + f (x - smooth), where PIL's SMOOTH filter is
    # (3x3 box sum + 4 centre) / 13 and leaves the border pixels as they are. Written as a x + b box3x3 with
    # a = f + 4 (1 - f) / 13, b = (1 - f) / 13, because a depthwise conv2d is slow on CPU.
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    f = uniform(g, len(x), 0.0, 2.0, x.device)
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # separable 3x3 box sum
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (n, 3, H-2, W-2)
    x[..., 1:-1, 1:-1].mul_(f + 4 * (1 - f) / 13).add_(box.mul_((1 - f) / 13)).clamp_(0, 1)
    return x


def _hue_saturation(x, g):
    # torchvision: adjust_hue / adjust_saturation take one factor per call, and saturation blends with grey.
    # imgaug AddToHueAndSaturation((-50, 50), per_channel=True): independent hue and saturation shifts, in units
    # of 1/255 of the hue circle and of the saturation range; the value (max channel) stays. RGB -> HSV -> RGB is
    # written out by hand (hue h in sextants [0, 6)) because it is the most expensive augmenter.
    n = len(x)
    dh = uniform(g, n, -50 / 255 * 6, 50 / 255 * 6, x.device, dims=3)  # (n, 1, 1), in sextants
    ds = uniform(g, n, -50 / 255, 50 / 255, x.device, dims=3)
    r, gr, b = x.unbind(1)  # (n, H, W) each
    v = torch.maximum(torch.maximum(r, gr), b)
    c = v - torch.minimum(torch.minimum(r, gr), b)  # chroma
    inv_c = c.clamp_min(1e-8).reciprocal_()  # grey pixels: numerators below are 0, so hue 0 as in OpenCV
    h = torch.where(r == v, (gr - b).mul_(inv_c),
                    torch.where(gr == v, (b - r).mul_(inv_c).add_(2), (r - gr).mul_(inv_c).add_(4)))
    h = h.add_(dh).remainder_(6)[:, None]  # (n, 1, H, W)
    chroma = c.div_(v.clamp_min(1e-8)).add_(ds).clamp_(0, 1).mul_(v)[:, None]  # new s * v
    # HSV -> RGB: channel = v - chroma + chroma * clamp(a |h - p| + b, 0, 1), per channel (a, p, b)
    a, p, off = (torch.tensor(t, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                 for t in ((1.0, -1.0, -1.0), (3.0, 2.0, 4.0), (-1.0, 2.0, 2.0)))
    torch.sub(h, p, out=x).abs_().mul_(a).add_(off).clamp_(0, 1)  # (n, 3, H, W), reusing x's memory
    return x.sub_(1).mul_(chroma).add_(v[:, None])


def _solarize(x, g):
    # torchvision: solarize takes one threshold per call; here each sample draws one.
    # imgaug Solarize(0.5, threshold=(32, 128)): for half of the images, invert the pixels above the threshold.
    n = len(x)
    apply = rand(g, n, device=x.device).view(n, 1, 1, 1) < 0.5
    threshold = uniform(g, n, 32 / 255, 128 / 255, x.device)
    threshold = torch.where(apply, threshold, torch.full_like(threshold, 2.0))  # 2: nothing is inverted
    return x.sub_((x >= threshold).to(x.dtype)).abs_()  # |x - 1| = 1 - x where inverted; faster than where()


def _posterize(x, g):
    # torchvision: posterize takes one bit depth per call; here each sample draws one.
    # imgaug Posterize(): keep the top 1..8 bits of each uint8 value (as PIL.ImageOps.posterize), i.e. round
    # down to a multiple of step = 2 ** (8 - bits); done in float to stay in place.
    bits = randint(g, 1, 9, len(x), x.device)
    step = (2.0 ** (8 - bits)).to(x.dtype).view(-1, 1, 1, 1)
    return x.clamp_(0, 1).mul_(255).add_(0.5).floor_().div_(step).floor_().mul_(step / 255)


def _invert(x, g):
    return TF.invert(x)  # 1 - x, the same values as imgaug's Invert on [0, 1]


def _autocontrast(x, g):
    # torchvision: autocontrast has no cutoff (it stretches min..max).
    # imgaug pillike.Autocontrast(cutoff=(0, 20)) = PIL ImageOps.autocontrast: per channel, cut `cutoff` % of
    # the darkest and of the brightest pixels, then stretch [lo, hi] linearly to [0, 255].
    n, c, h, w = x.shape
    cutoff = randint(g, 0, 21, n, x.device).repeat_interleave(c)
    q, hist = _quantize(x)  # (n*c, H*W) 0..255, (n*c, 256)
    cut = (h * w * cutoff // 100)[:, None]
    lo = (hist.cumsum(1) <= cut).sum(1)  # first bin left after cutting from the dark end
    hi = 255 - (hist.flip(1).cumsum(1) <= cut).sum(1)
    ok = hi > lo
    scale = torch.where(ok, 255 / (hi - lo).clamp_min(1), torch.ones_like(lo, dtype=x.dtype))
    offset = torch.where(ok, -lo * scale, torch.zeros_like(scale))
    out = torch.mul(q, scale[:, None], out=x.view(n * c, -1))  # reuse x's memory
    return out.add_(offset[:, None]).clamp_(0, 255).floor_().div_(255).view(n, c, h, w)


def _equalize(x, g):
    # torchvision: equalize quantises floats by truncation (x * 255.999) and returns step-0 images unquantised;
    # this rounds, as a uint8 image would be.
    # PIL ImageOps.equalize per channel: lut[i] = (pixels below i + step // 2) // step,
    # step = (pixels not in the last used bin) // 255; identity when step is 0.
    n, c, h, w = x.shape
    q, hist = _quantize(x)
    last = 255 - (hist.flip(1) > 0).int().argmax(1)  # last non-empty bin
    step = (h * w - hist.gather(1, last[:, None])) // 255  # (n*c, 1)
    below = hist.cumsum(1) - hist
    lut = ((below + step // 2) // step.clamp_min(1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device)).to(x.dtype) / 255
    return lut.gather(1, q.long()).view(n, c, h, w)  # gather: 3x faster than lut[idx]


def _rotate(x, g):
    # torchvision: rotate takes one angle per call; here each sample draws one (see rotate()).
    # imgaug Affine(rotate=(-45, 45)), bilinear, 0 fill
    return rotate(x, uniform(g, len(x), -45.0, 45.0, x.device).flatten())


AUGMENTERS = {
    "gamma": _gamma,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "hue_saturation": _hue_saturation,
    "solarize": _solarize,
    "posterize": _posterize,
    "invert": _invert,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate": _rotate,
}
AUGMENTER_NAMES = tuple(AUGMENTERS)


def augment_textures(textures, generator, n_ops=3):
    """Each sample of (B, 3, H, W) gets `n_ops` distinct random augmenters, applied in the drawn order.

    DRAEM's `randAugmenter`. `textures` is not modified.
    """
    return augment_textures_(textures.clone(), generator, n_ops)


def augment_textures_(textures, generator, n_ops=3):
    """augment_textures, overwriting `textures`.

    Vectorised per round: the samples that drew the same augmenter go through it together, so there are at
    most 10 batched calls per round whatever B is. Only group-sized buffers are allocated: on CPU, fresh
    batch-sized buffers cost page faults that take as long as the arithmetic.
    """
    b = textures.shape[0]
    ops = rand(generator, b, len(AUGMENTER_NAMES)).argsort(dim=1)[:, :n_ops]  # (B, n_ops), CPU
    for r in range(n_ops):
        for k, name in enumerate(AUGMENTER_NAMES):
            idx = (ops[:, r] == k).nonzero().flatten().to(textures.device)
            if len(idx):  # ([] indexing is 2x faster than index_select / index_copy_ on CPU)
                textures[idx] = AUGMENTERS[name](textures[idx], generator)
    return textures
