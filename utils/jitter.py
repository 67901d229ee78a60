"""Normal variation is normal: random jitter of whole good images before defects are simulated.

Good parts differ in lighting, exposure, focus and sensor noise. A network that has only seen one exposure per
part calls the next exposure an anomaly (a false positive). Jittering the whole good image, and using the
jittered image both as the input and as the reconstruction target, teaches both networks that these changes
are normal. Flips and 90-degree turns are separate kinds: they change what "normal" means for parts with an
orientation, so they are opt-in.

    x = jitter_images(x, generator, ("brightness", "contrast", "gamma", "blur", "noise"))  # (B, 3, H, W) in [0, 1]
"""
import torch
import torch.nn.functional as F

PHOTOMETRIC = ("brightness", "contrast", "gamma", "blur", "noise")
GEOMETRIC = ("flip", "rot90")
KINDS = PHOTOMETRIC + GEOMETRIC
ALIASES = {"none": (), "photo": PHOTOMETRIC, "geo": GEOMETRIC, "all": KINDS}
APPLY_PROB = 0.5  # each kind is applied to a sample with this probability, independently


def parse_kinds(text):
    """'photo', 'none', 'brightness,noise,flip', 'photo,flip' -> a tuple of kind names (ValueError if unknown)."""
    kinds = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in ALIASES and part not in KINDS:
            raise ValueError(f"unknown jitter {part!r}; choose from {', '.join((*ALIASES, *KINDS))}")
        kinds += [k for k in ALIASES.get(part, (part,)) if k not in kinds]
    return tuple(kinds)


def _u(generator, n, low, high, device):
    """Per-sample U[low, high) as (n, 1, 1, 1), drawn on the generator's device."""
    u = torch.rand(n, generator=generator, device=generator.device).to(device)
    return (low + (high - low) * u).view(n, 1, 1, 1)


def _blur(x):
    """Gaussian blur, sigma 1 px (separable 5-tap, reflect padding); (B, C, H, W) -> same."""
    t = torch.arange(5, dtype=x.dtype, device=x.device) - 2
    k = torch.exp(-t ** 2 / 2)
    k = (k / k.sum()).view(1, 1, 1, 5).expand(x.shape[1], 1, 1, 5)
    y = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return F.conv2d(F.pad(y, (0, 0, 2, 2), mode="reflect"), k.transpose(2, 3), groups=x.shape[1])


def _photometric(kind, x, generator):
    """One photometric change with per-sample strength; the same for every channel (grey stays grey)."""
    n, dev = len(x), x.device
    if kind == "brightness":
        return x + _u(generator, n, -0.1, 0.1, dev)
    if kind == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * _u(generator, n, -0.415, 0.415, dev).exp2() + mean  # factor 0.75 .. 1.33
    if kind == "gamma":  # gamma in [0.7, 1.4], log-uniform
        return x.clamp(1e-6, 1).pow(_u(generator, n, -0.5, 0.5, dev).exp2())
    if kind == "blur":  # mix of the image and its blur: 0 (sharp) .. 1 (sigma 1 px)
        return torch.lerp(x, _blur(x), _u(generator, n, 0.0, 1.0, dev))
    std = _u(generator, n, 0.0, 0.02, dev)  # noise: Gaussian, std up to 5 grey levels, same on every channel
    noise = torch.randn(n, 1, *x.shape[2:], generator=generator, device=generator.device).to(dev)
    return x + std * noise


def _geometric(kind, x, generator):
    n = len(x)
    if kind == "flip":  # horizontal and vertical, each with probability 1/2
        r = torch.rand(n, 2, generator=generator, device=generator.device).cpu() < 0.5
        x = torch.where(r[:, 0].view(n, 1, 1, 1).to(x.device), x.flip(-1), x)
        return torch.where(r[:, 1].view(n, 1, 1, 1).to(x.device), x.flip(-2), x)
    k = torch.randint(0, 4, (n,), generator=generator, device=generator.device).cpu()
    if x.shape[-1] != x.shape[-2]:  # a quarter turn of a non-square image changes its shape: half turns only
        k = k // 2 * 2
    return torch.stack([torch.rot90(xi, int(ki), dims=(-2, -1)) for xi, ki in zip(x, k)])


def jitter_images(images, generator, kinds, prob=APPLY_PROB):
    """images (B, C, H, W) in [0, 1] -> a jittered copy, same shape, in [0, 1]; `images` is not modified.

    Each kind in `kinds` is applied to each sample with probability `prob`, in the order of KINDS.
    """
    x = images
    for kind in (k for k in KINDS if k in kinds):
        on = (torch.rand(len(x), generator=generator, device=generator.device) < prob).to(x.device)
        if not on.any():
            continue
        changed = _geometric(kind, x, generator) if kind in GEOMETRIC else _photometric(kind, x, generator)
        x = torch.where(on.view(-1, 1, 1, 1), changed, x)
    return x.clamp(0, 1) if x is not images else images
