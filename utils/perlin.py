"""Batched 2-D Perlin noise, the source of DRAEM's anomaly masks.

Same noise as `rand_perlin_2d` in the authors' code (random unit gradients on a lattice, fade 6t^5-15t^4+10t^3,
scaled by sqrt(2) so values lie in [-1, 1]), but for a whole batch in one call, each sample with its own lattice
scale, and for any H x W (the authors' version needs H, W divisible by the scale).

The trick that makes it fast: Perlin noise is a sum of products of a y-only and an x-only factor. For a pixel
with lattice cell (i0, j0), offsets (fy, fx) and fade weights wy = (1 - fade(fy), fade(fy)), wx likewise,

    n(y, x) = sum_{a, b in {0, 1}} wy_a wx_b [gy[i0+a, j0+b] (fy - a) + gx[i0+a, j0+b] (fx - b)]
            = (Ay @ Gy @ Bx^T)[y, x] + (Cy @ Gx @ Dx^T)[y, x]

where Ay[y, i] = sum_a [i == i0+a] wy_a (fy - a), Cy[y, i] = sum_a [i == i0+a] wy_a, and Bx, Dx are the same
for x with the roles of weight and offset swapped. So the whole map is two small batched matrix products
(B, H, 33) @ (B, 33, 33) @ (B, 33, W) instead of four per-pixel gathers.
"""
import math

import torch

MAX_EXP = 6  # scales 2**0 .. 2**5, as the paper (and the authors' `perlin_scale = 6`)
TABLE = 2 ** (MAX_EXP - 1) + 1  # gradient lattice points per axis for the largest scale (32 cells -> 33 points)


def random_perlin_scales(batch, generator=None, device=None, min_exp=0, max_exp=MAX_EXP):
    """Per sample and axis a lattice scale 2**k, k uniform in [min_exp, max_exp); LongTensor (B, 2)."""
    gen_device = generator.device if generator is not None else None
    k = torch.randint(min_exp, max_exp, (batch, 2), generator=generator, device=gen_device)
    return (2 ** k).to(device)


def _fade(t):
    return t * t * t * (t * (t * 6 - 15) + 10)


def _axis_factors(length, res):
    """Separable factors along one axis: (weight * offset, weight), each (B, length, TABLE).

    res: (B,) lattice cells along this axis. Pixel p sits at continuous lattice coordinate p * res / length.
    """
    pos = torch.arange(length, device=res.device, dtype=torch.float32)[None] * (res[:, None].float() / length)
    cell = pos.floor()  # (B, L)
    frac = pos - cell
    w1 = _fade(frac)
    w0 = 1 - w1
    idx = torch.arange(TABLE, device=res.device, dtype=torch.float32)
    at0 = (idx == cell[..., None]).float()  # (B, L, TABLE) one-hot of the lower lattice point
    at1 = (idx == cell[..., None] + 1).float()  # upper lattice point
    weight = at0 * w0[..., None] + at1 * w1[..., None]
    weighted_offset = at0 * (w0 * frac)[..., None] + at1 * (w1 * (frac - 1))[..., None]
    return weighted_offset, weight


def perlin_noise(batch, height, width, scales=None, generator=None, device=None):
    """B independent Perlin maps, FloatTensor (B, H, W) in [-1, 1].

    scales: (B, 2) integer lattice cells (rows, cols), each in 1..32; default `random_perlin_scales`.
    All randomness is drawn with `generator` on its own device, the result is moved to `device`.
    """
    gen_device = generator.device if generator is not None else None
    if scales is None:
        scales = random_perlin_scales(batch, generator)
    scales = torch.as_tensor(scales).to(gen_device)
    if int(scales.min()) < 1 or int(scales.max()) > TABLE - 1:
        raise ValueError(f"Perlin scales must be in 1..{TABLE - 1}, got {scales.tolist()}")
    angles = 2 * math.pi * torch.rand(batch, TABLE, TABLE, generator=generator, device=gen_device)
    angles, scales = angles.to(device), scales.to(device)
    grad_y, grad_x = torch.cos(angles), torch.sin(angles)  # (B, TABLE, TABLE); y pairs with cos as the authors'
    off_y, w_y = _axis_factors(height, scales[:, 0])  # (B, H, TABLE)
    off_x, w_x = _axis_factors(width, scales[:, 1])  # (B, W, TABLE)
    left = torch.cat([off_y @ grad_y, w_y @ grad_x], dim=2)  # (B, H, 2 * TABLE)
    right = torch.cat([w_x, off_x], dim=2)  # (B, W, 2 * TABLE)
    return math.sqrt(2) * (left @ right.transpose(1, 2))  # (B, H, W)
