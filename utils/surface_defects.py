"""Defects made of the part's own surface, not of a pasted texture.

DRAEM pastes a foreign texture into a mask; real defects on grey textured parts (magnetic tiles, castings,
machined metal) are more often the part's own surface changed: a darker or brighter patch, a large smooth
shading change ("uneven"), a faint stain, material pushed aside. A network that only ever saw pasted textures
learns "foreign texture = defect" and misses these. Kinds (one per sample, uniformly):

- shade: the masked region darkened or brightened by 15-50%, soft edges, no texture;
- blob:  a large smooth Perlin region darkened or brightened by 15-40% (ignores the given mask);
- faint: the usual texture paste at low opacity (10-35%), a low-contrast stain;
- warp:  the part's own structure displaced by a smooth field of 1.5-5% of the image inside the mask (as DSR and
  NSA move real structure); only pixels that visibly changed are labelled.

All operate on every channel alike (grey stays grey). Labels are {0, 1} masks; a sample whose change is
invisible (e.g. a warp of a flat region) gets an empty mask and counts as normal.
"""
import torch
import torch.nn.functional as F

from utils.perlin import perlin_noise, random_perlin_scales

KINDS = ("shade", "blob", "faint", "warp")


def _u(generator, n, low, high, device):
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    return (low + (high - low) * u).view(n, 1, 1, 1)


def _sign(generator, n, device):
    return torch.where(_u(generator, n, 0, 1, device) < 0.5, -1.0, 1.0)


def soften(mask, sigma):
    """Separable Gaussian blur of (n, 1, H, W) with std `sigma` pixels (zero padding: edges fade out)."""
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=mask.dtype, device=mask.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    y = F.conv2d(mask, k, padding=(0, r))
    return F.conv2d(y, k.transpose(2, 3), padding=(r, 0))


def shade(image, mask, generator):
    """Darken/brighten inside the soft mask: image * (1 + gain * soft), gain +-[0.15, 0.5]."""
    n, _, h, w = image.shape
    soft = soften(mask, 0.015 * max(h, w))
    gain = _sign(generator, n, image.device) * _u(generator, n, 0.15, 0.5, image.device)
    return (image * (1 + gain * soft)).clamp(0, 1), mask


def blob(image, generator):
    """A large smooth shading region (Perlin lattice 1-2 cells), +-[0.15, 0.4] gain; label = soft region > 0.5."""
    n, _, h, w = image.shape
    scales = random_perlin_scales(n, generator, min_exp=0, max_exp=2)
    noise = perlin_noise(n, h, w, scales, generator, image.device)[:, None]  # (n, 1, H, W) in [-1, 1]
    level = _u(generator, n, 0.1, 0.4, image.device)
    soft = torch.sigmoid((noise - level) * 12)  # a soft-edged region covering some of the image
    gain = _sign(generator, n, image.device) * _u(generator, n, 0.15, 0.4, image.device)
    return (image * (1 + gain * soft)).clamp(0, 1), (soft > 0.5).to(image.dtype)


def faint(image, mask, texture, generator):
    """The texture paste at opacity 10-35%."""
    alpha = _u(generator, len(image), 0.10, 0.35, image.device)
    return torch.lerp(image, texture, mask * alpha), mask


def warp(image, mask, generator, min_change=0.04):
    """Move the part's own structure inside the (softened) mask by a smooth field of 1.5-5% of the image."""
    n, _, h, w = image.shape
    soft = soften(mask, 0.02 * max(h, w))[:, 0]  # (n, H, W)
    scales = random_perlin_scales(2 * n, generator, min_exp=1, max_exp=3)
    field = perlin_noise(2 * n, h, w, scales, generator, image.device).view(n, 2, h, w)
    amp = _u(generator, n, 0.03, 0.10, image.device).view(n, 1, 1, 1)  # in grid units [-1, 1]: 1.5-5% of the image
    flow = (field * amp * soft[:, None]).permute(0, 2, 3, 1)  # (n, H, W, 2)
    ys = torch.linspace(-1, 1, h, device=image.device)
    xs = torch.linspace(-1, 1, w, device=image.device)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    moved = F.grid_sample(image, base + flow, mode="bilinear", padding_mode="reflection", align_corners=True)
    changed = soften((moved - image).abs().amax(dim=1, keepdim=True), 1.0) > min_change / 4
    return moved, mask * changed.to(image.dtype)


def surface_defects(image, mask, texture, generator, kinds=KINDS):
    """image, texture (n, 3, H, W) in [0, 1]; mask (n, 1, H, W) {0, 1} -> (augmented, label mask), same shapes.

    One kind of `kinds` per sample, uniformly.
    """
    n = len(image)
    pick = torch.randint(0, len(kinds), (n,), generator=generator, device=generator.device).cpu()
    out, labels = image.clone(), mask.clone()
    for k, kind in enumerate(kinds):
        idx = (pick == k).nonzero().flatten().to(image.device)
        if not len(idx):
            continue
        if kind == "shade":
            out[idx], labels[idx] = shade(image[idx], mask[idx], generator)
        elif kind == "blob":
            out[idx], labels[idx] = blob(image[idx], generator)
        elif kind == "faint":
            out[idx], labels[idx] = faint(image[idx], mask[idx], texture[idx], generator)
        elif kind == "warp":
            out[idx], labels[idx] = warp(image[idx], mask[idx], generator)
        else:
            raise ValueError(f"unknown surface defect {kind!r}; choose from {', '.join(KINDS)}")
    return out, labels
