"""DRAEM's anomaly simulation, batched in torch.

Per sample this is the authors' `MVTecDRAEMTrainDataset.transform_image` (data_loader.py): maybe rotate the
clean image, threshold a rotated Perlin noise map into a mask, paste a texture that went through three random
augmenters into the mask with opacity 1 - beta; half of the samples stay normal. Here it runs on a whole
batch on the training device, which is ~10x faster than the original numpy/imgaug code on one CPU core.

Recipes: "paper" is `AnomalySynthesizer`; "ours" (`DefectSynthesizer`) also draws thin cracks and small pits
(utils/defect_shapes.py). Sample grid (rows: clean image, augmented image, mask):
    python -m utils.synthesis --data_path FOLDER [--anomaly_source_path DTD_FOLDER] [--recipe paper] --out grid.png
"""
import argparse
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.data_loader import list_images, read_image
from utils.defect_shapes import mixed_masks
from utils.perlin import perlin_noise, random_perlin_scales
from utils.surface_defects import surface_defects

log = logging.getLogger(__name__)

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as cv2 / PIL grayscale


# ----------------------------------------------------------------------------------------------- helpers
def _rand(generator, *shape, device=None):
    """U[0, 1) drawn on the generator's own device (torch.Generator is device-bound), then moved."""
    gen_device = generator.device if generator is not None else None
    return torch.rand(*shape, generator=generator, device=gen_device).to(device)


def _uniform(generator, n, low, high, device, dims=4, channels=1):
    """Per-sample U[low, high), shaped (n, channels, 1, 1) for broadcasting over (n, C, H, W)."""
    u = _rand(generator, n, channels, device=device)
    return (low + (high - low) * u).view(n, channels, *([1] * (dims - 2)))


def _randint(generator, low, high, n, device):
    gen_device = generator.device if generator is not None else None
    return torch.randint(low, high, (n,), generator=generator, device=gen_device).to(device)


def _luminance(x):
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
# Each takes (n, 3, H, W) float in [0, 1] and a generator, draws its parameters per sample and returns the
# result, in [0, 1]. They may overwrite x (augment_textures hands them a private buffer; apply_augmenter a copy),
# because on CPU the fresh memory of out-of-place ops costs about as much as the arithmetic.
def _gamma(x, g):
    # imgaug GammaContrast((0.5, 2.0), per_channel=True)
    gamma = _uniform(g, len(x), 0.5, 2.0, x.device, channels=3)
    return x.clamp_(0, 1).log_().mul_(gamma).exp_()  # = x ** gamma (0 -> 0); a broadcast pow is 4x slower


def _brightness(x, g):
    # imgaug MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): change Y of YCrCb and keep the chroma,
    # so every channel moves by the same amount; the two ops run in random order, as in imgaug.
    n = len(x)
    mul = _uniform(g, n, 0.8, 1.2, x.device)
    add = _uniform(g, n, -30 / 255, 30 / 255, x.device)
    mul_first = _rand(g, n, device=x.device).view(n, 1, 1, 1) < 0.5
    delta = _luminance(x).mul_(mul - 1).add_(add * torch.where(mul_first, torch.ones_like(mul), mul))
    return x.add_(delta).clamp_(0, 1)


def _sharpness(x, g):
    # PIL ImageEnhance.Sharpness(factor U(0, 2)): smooth + f (x - smooth), where PIL's SMOOTH filter is
    # (3x3 box sum + 4 centre) / 13 and leaves the border pixels as they are. Written as a x + b box3x3 with
    # a = f + 4 (1 - f) / 13, b = (1 - f) / 13, because a depthwise conv2d is slow on CPU.
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    f = _uniform(g, len(x), 0.0, 2.0, x.device)
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # separable 3x3 box sum
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (n, 3, H-2, W-2)
    x[..., 1:-1, 1:-1].mul_(f + 4 * (1 - f) / 13).add_(box.mul_((1 - f) / 13)).clamp_(0, 1)
    return x


def _hue_saturation(x, g):
    # imgaug AddToHueAndSaturation((-50, 50), per_channel=True): independent hue and saturation shifts, in units
    # of 1/255 of the hue circle and of the saturation range; the value (max channel) stays. RGB -> HSV -> RGB is
    # written out by hand (hue h in sextants [0, 6)) because it is the most expensive augmenter.
    n = len(x)
    dh = _uniform(g, n, -50 / 255 * 6, 50 / 255 * 6, x.device, dims=3)  # (n, 1, 1), in sextants
    ds = _uniform(g, n, -50 / 255, 50 / 255, x.device, dims=3)
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
    # imgaug Solarize(0.5, threshold=(32, 128)): for half of the images, invert the pixels above the threshold.
    n = len(x)
    apply = _rand(g, n, device=x.device).view(n, 1, 1, 1) < 0.5
    threshold = _uniform(g, n, 32 / 255, 128 / 255, x.device)
    threshold = torch.where(apply, threshold, torch.full_like(threshold, 2.0))  # 2: nothing is inverted
    return x.sub_((x >= threshold).to(x.dtype)).abs_()  # |x - 1| = 1 - x where inverted; faster than where()


def _posterize(x, g):
    # imgaug Posterize(): keep the top 1..8 bits of each uint8 value (as PIL.ImageOps.posterize), i.e. round
    # down to a multiple of step = 2 ** (8 - bits); done in float to stay in place.
    bits = _randint(g, 1, 9, len(x), x.device)
    step = (2.0 ** (8 - bits)).to(x.dtype).view(-1, 1, 1, 1)
    return x.clamp_(0, 1).mul_(255).add_(0.5).floor_().div_(step).floor_().mul_(step / 255)


def _invert(x, g):
    return x.neg_().add_(1)


def _autocontrast(x, g):
    # imgaug pillike.Autocontrast(cutoff=(0, 20)) = PIL ImageOps.autocontrast: per channel, cut `cutoff` % of
    # the darkest and of the brightest pixels, then stretch [lo, hi] linearly to [0, 255].
    n, c, h, w = x.shape
    cutoff = _randint(g, 0, 21, n, x.device).repeat_interleave(c)
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
    # imgaug Affine(rotate=(-45, 45)), bilinear, 0 fill
    return rotate(x, _uniform(g, len(x), -45.0, 45.0, x.device).flatten())


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


def apply_augmenter(name, textures, generator):
    """One named augmenter on a batch (B, 3, H, W) float in [0, 1]; parameters drawn per sample."""
    if name not in AUGMENTERS:
        raise ValueError(f"unknown augmenter {name!r}; choose from {AUGMENTER_NAMES}")
    return AUGMENTERS[name](textures.clone(), generator)


def augment_textures(textures, generator, n_ops=3):
    """Each sample of (B, 3, H, W) gets `n_ops` distinct random augmenters, applied in the drawn order.

    DRAEM's `randAugmenter`. `textures` is not modified.
    """
    return _augment_textures_(textures.clone(), generator, n_ops)


def _augment_textures_(textures, generator, n_ops=3):
    """augment_textures, overwriting `textures`.

    Vectorised per round: the samples that drew the same augmenter go through it together, so there are at
    most 10 batched calls per round whatever B is. Only group-sized buffers are allocated: on CPU, fresh
    batch-sized buffers cost page faults that take as long as the arithmetic.
    """
    b = textures.shape[0]
    ops = _rand(generator, b, len(AUGMENTER_NAMES)).argsort(dim=1)[:, :n_ops]  # (B, n_ops), CPU
    for r in range(n_ops):
        for k, name in enumerate(AUGMENTER_NAMES):
            idx = (ops[:, r] == k).nonzero().flatten().to(textures.device)
            if len(idx):  # ([] indexing is 2x faster than index_select / index_copy_ on CPU)
                textures[idx] = AUGMENTERS[name](textures[idx], generator)
    return textures


# ------------------------------------------------------------------------------------ procedural textures
def _coords(n, h, w, generator, device):
    """Per-sample rotated coordinates u, v (n, 1, H, W), in units of the longer image side."""
    side = max(h, w)
    y = (torch.arange(h, device=device, dtype=torch.float32) / side).view(1, 1, h, 1)
    x = (torch.arange(w, device=device, dtype=torch.float32) / side).view(1, 1, 1, w)
    angle = _uniform(generator, n, 0.0, math.pi, device)
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
    freq = _uniform(generator, n, 2.0, 24.0, device)
    phase = _uniform(generator, n, 0.0, 2 * math.pi, device)
    hardness = _uniform(generator, n, 1.0, 12.0, device)  # soft waves ... hard bands
    return torch.sigmoid(hardness * torch.sin(2 * math.pi * freq * u + phase))


def _spots(n, h, w, generator, device, count=10):
    # the brightest of `count` Gaussian spots per pixel
    side = max(h, w)
    y = (torch.arange(h, device=device, dtype=torch.float32) / side).view(1, 1, h, 1)
    x = (torch.arange(w, device=device, dtype=torch.float32) / side).view(1, 1, 1, w)
    cy = _rand(generator, n, count, device=device)[..., None, None] * (h / side)
    cx = _rand(generator, n, count, device=device)[..., None, None] * (w / side)
    radius = 0.02 + 0.13 * _rand(generator, n, count, device=device)[..., None, None]
    d2 = (y - cy) ** 2 + (x - cx) ** 2  # (n, count, H, W)
    return torch.exp(-d2 / (2 * radius ** 2)).amax(dim=1, keepdim=True)


def _checker(n, h, w, generator, device):
    u, v = _coords(n, h, w, generator, device)
    freq = _uniform(generator, n, 2.0, 16.0, device)
    checker = ((u * freq).floor() + (v * freq).floor()) % 2
    width = _uniform(generator, n, 0.05, 0.3, device)
    grid = (((u * freq) % 1 < width) | ((v * freq) % 1 < width)).float()
    use_grid = _rand(generator, n, device=device).view(n, 1, 1, 1) < 0.5
    return torch.where(use_grid, grid, checker)


PATTERNS = (_fractal, _stripes, _spots, _checker)


def procedural_textures(batch, height, width, generator, device=None):
    """Anomaly source without a texture folder: (B, 3, H, W) float in [0, 1].

    Per sample one pattern (fractal noise, stripes/bands, spots, checker/grid) at a random angle and frequency,
    mixed with some fractal noise and painted between two random colours.
    """
    kind = _randint(generator, 0, len(PATTERNS), batch, device=None).cpu()
    pattern = torch.empty(batch, 1, height, width, device=device)
    for k, make in enumerate(PATTERNS):
        idx = (kind == k).nonzero().flatten()
        if len(idx):
            pattern[idx.to(device)] = make(len(idx), height, width, generator, device)
    mix = _uniform(generator, batch, 0.0, 0.4, device)
    pattern = torch.lerp(pattern, _fractal(batch, height, width, generator, device), mix)
    dark = _rand(generator, batch, 3, device=device).view(batch, 3, 1, 1)
    light = _rand(generator, batch, 3, device=device).view(batch, 3, 1, 1)
    return torch.lerp(dark, light, pattern).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- textures
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


# ------------------------------------------------------------------------------------------- synthesiser
def blend(image, texture, mask, beta, out=None):
    """DRAEM's paste: image outside the mask, (1 - beta) texture + beta image inside it.

    image, texture (B, 3, H, W); mask (B, 1, H, W) in {0, 1}; beta (B,) or a number; `out` may be `texture`.
    """
    beta = torch.as_tensor(beta, dtype=image.dtype, device=image.device)
    if beta.ndim == 1:
        beta = beta.view(-1, 1, 1, 1)
    # image * (1 - mask) + (1 - beta) * texture * mask + beta * image * mask, in one fused op
    return torch.lerp(image, texture, mask * (1 - beta), out=out)


class AnomalySynthesizer:
    """Turns a batch of normal images into DRAEM training samples (see the module docstring).

    texture_bank: (N, 3, S, S) uint8 from `load_texture_bank`, or None for `procedural_textures`.
    """

    def __init__(self, texture_bank=None, grayscale=False, rotate_prob=0.3, anomaly_prob=0.5, beta_max=0.8,
                 threshold=0.5):
        if texture_bank is not None and (texture_bank.dtype != torch.uint8 or texture_bank.ndim != 4
                                         or texture_bank.shape[1] != 3 or len(texture_bank) == 0):
            raise ValueError(f"texture_bank must be a non-empty (N, 3, S, S) uint8 tensor, got "
                             f"{texture_bank.dtype} {tuple(texture_bank.shape)}")
        self.texture_bank = texture_bank
        self.grayscale = grayscale
        self.rotate_prob = rotate_prob
        self.anomaly_prob = anomaly_prob
        self.beta_max = beta_max
        self.threshold = threshold

    def to(self, device):
        if self.texture_bank is not None:
            self.texture_bank = self.texture_bank.to(device)
        return self

    def masks(self, n, h, w, generator, device):
        """Thresholded, rotated Perlin noise: (n, 1, H, W) float in {0, 1}."""
        noise = perlin_noise(n, h, w, random_perlin_scales(n, generator), generator, device)[:, None]
        noise = rotate(noise, _uniform(generator, n, -90.0, 90.0, device).flatten())
        return (noise > self.threshold).float()

    def textures(self, n, h, w, generator, device):
        """Augmented anomaly textures (n, 3, H, W) in [0, 1]: bank images (or procedural) + 3 augmenters."""
        if self.texture_bank is None:
            tex = procedural_textures(n, h, w, generator, device)
        else:
            pick = _randint(generator, 0, len(self.texture_bank), n, self.texture_bank.device)
            tex = self.texture_bank[pick].to(device).float().div_(255)
            if tex.shape[-2:] != (h, w):
                tex = F.interpolate(tex, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                tex = tex.clamp(0, 1)
        tex = _augment_textures_(tex, generator, n_ops=3)  # tex is ours to overwrite
        if self.grayscale:
            tex = _luminance(tex).repeat(1, 3, 1, 1)
        return tex

    def __call__(self, images, generator):
        """images (B, 3, H, W) float in [0, 1] -> dict(image, augmented_image, anomaly_mask, has_anomaly).

        `image` is `images` itself when no sample was rotated; `images` is never modified.
        """
        b, _, h, w = images.shape
        device = images.device
        # 1. rotate some clean images; the rotated one is the reconstruction target
        rot = (_rand(generator, b) < self.rotate_prob).nonzero().flatten().to(device)
        angles = _uniform(generator, len(rot), -90.0, 90.0, device).flatten()
        image = images
        if len(rot):
            image = images.clone()
            image[rot] = rotate(images[rot], angles)
        # 5. (drawn first) only the anomalous samples need a mask and a texture at all
        idx = (_rand(generator, b) < self.anomaly_prob).nonzero().flatten().to(device)
        mask = torch.zeros(b, 1, h, w, device=device, dtype=image.dtype)
        has_anomaly = torch.zeros(b, device=device, dtype=image.dtype)
        augmented = image.clone()
        if len(idx):
            augmented[idx], m = self.defects(image[idx], generator)
            mask[idx] = m
            has_anomaly[idx] = m.flatten(1).amax(dim=1)  # an empty mask makes a normal sample
        return {"image": image, "augmented_image": augmented, "anomaly_mask": mask, "has_anomaly": has_anomaly}

    def defects(self, image, generator):
        """Steps 2-4 for the anomalous samples image (n, 3, H, W): (augmented image, mask (n, 1, H, W))."""
        n, _, h, w = image.shape
        m = self.masks(n, h, w, generator, image.device).to(image.dtype)  # 2.
        texture = self.textures(n, h, w, generator, image.device).to(image.dtype)  # 3.
        beta = _uniform(generator, n, 0.0, self.beta_max, image.device)  # 4.
        return blend(image, texture, m, beta, out=texture), m


class DefectSynthesizer(AnomalySynthesizer):
    """Recipe "ours": DRAEM's simulation, with half of the Perlin blobs replaced by thin cracks and small pits,
    and a share of the textures cut from the batch's own good images (flipped, then DRAEM's 3 augmenters)."""

    def __init__(self, *args, self_texture_prob=0.0, surface_defect_prob=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.self_texture_prob = self_texture_prob
        self.surface_defect_prob = surface_defect_prob
        self._batch = None

    def __call__(self, images, generator):
        self._batch = images
        try:
            return super().__call__(images, generator)
        finally:
            self._batch = None

    def defects(self, image, generator):
        """The paste, with a share `surface_defect_prob` of the samples changed in their own surface instead
        (utils/surface_defects.py: shading, smooth blobs, faint stains, warps)."""
        out, m = super().defects(image, generator)
        if self.surface_defect_prob <= 0:
            return out, m
        u = torch.rand(len(image), generator=generator, device=generator.device)
        pick = (u < self.surface_defect_prob).nonzero().flatten().to(image.device)
        if len(pick):
            texture = self.textures(len(pick), *image.shape[2:], generator, image.device).to(image.dtype)
            out[pick], m[pick] = surface_defects(image[pick], m[pick], texture, generator)
        return out, m

    def masks(self, n, h, w, generator, device):
        perlin = super().masks
        return mixed_masks(n, h, w, generator, lambda k, hh, ww: perlin(k, hh, ww, generator, device), device)

    def textures(self, n, h, w, generator, device):
        tex = super().textures(n, h, w, generator, device)
        if self.self_texture_prob > 0 and self._batch is not None:
            u = torch.rand(n, generator=generator, device=generator.device)
            pick = (u < self.self_texture_prob).nonzero().flatten().to(device)
            if len(pick):
                src = torch.randint(0, len(self._batch), (len(pick),), generator=generator,
                                    device=generator.device).to(device)
                tex[pick] = augment_textures(self._batch[src].flip(-1, -2), generator)
        return tex


def make_synthesizer(recipe, bank, grayscale, **overrides):
    """The anomaly simulation for --recipe `recipe` ("paper": DRAEM as published)."""
    if recipe == "paper":
        overrides.pop("self_texture_prob", None)
        overrides.pop("surface_defect_prob", None)
        return AnomalySynthesizer(bank, grayscale=grayscale, **overrides)
    return DefectSynthesizer(bank, grayscale=grayscale, **overrides)


def synthesis_throughput(synth, batch=32, size=256, iters=5, device="cpu"):
    """Samples per second of `synth` on random (batch, 3, size, size) images, warm-up call excluded.

    Moves `synth` (its texture bank) to `device`.
    """
    device = torch.device(device)
    synth.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    synth(images, generator)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        synth(images, generator)
    sync()
    return batch * iters / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------- sample grid
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Write a grid of DRAEM synthetic anomalies (clean / augmented / mask).")
    p.add_argument("--data_path", required=True, help="folder of normal images (searched recursively)")
    p.add_argument("--anomaly_source_path", default=None,
                   help="folder of texture images (e.g. DTD); default: procedural textures")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--out", default="docs/synthetic_samples.png", help="output PNG")
    p.add_argument("--grayscale", action="store_true", help="grey anomalies (for grayscale datasets)")
    p.add_argument("--n", type=int, default=8, help="number of columns (samples)")
    p.add_argument("--recipe", choices=("ours", "paper"), default="ours", help="as train.py --recipe")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--anomaly_prob", type=float, default=1.0,
                   help="probability that a shown sample gets an anomaly (training uses 0.5)")
    p.add_argument("--max_textures", type=int, default=256, help="at most this many texture images are loaded")
    return p.parse_args(argv)


def save_grid(batch, out):
    """Rows: clean image, augmented image, mask; one column per sample."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(batch["image"])
    rows = [("clean", batch["image"]), ("augmented", batch["augmented_image"]), ("mask", batch["anomaly_mask"])]
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 1.6 * 3), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = images[c].permute(1, 2, 0).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    files = list_images(args.data_path)
    if not files:
        raise FileNotFoundError(f"no images found in {args.data_path}")
    pick = torch.randperm(len(files), generator=generator)[: args.n].tolist()
    images = torch.stack([read_image(files[i], args.size) for i in pick])
    bank = None
    if args.anomaly_source_path:
        bank = load_texture_bank(args.anomaly_source_path, args.size, args.max_textures, generator)
    synth = make_synthesizer(args.recipe, bank, args.grayscale, anomaly_prob=args.anomaly_prob)
    save_grid(synth(images, generator), args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
