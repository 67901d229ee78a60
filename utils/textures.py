"""Where simulated defects get their look: a bank of texture images (DTD in the paper) or procedural textures.

    bank = load_texture_bank("path/to/dtd/images", 256)      # (N, 3, 256, 256) uint8, kept on the device
    tex = procedural_textures(8, 256, 256, generator)         # (8, 3, 256, 256) float in [0, 1]
"""
import logging
import math
from pathlib import Path

import torch

from utils.data_loader import list_images, read_image
from utils.perlin import perlin_noise, random_perlin_scales
from utils.sampling import rand, randint, uniform

log = logging.getLogger(__name__)


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


