"""Random draws on a `torch.Generator`, shaped for batches: the one place synthesis code gets its randomness.

torch.Generator is device-bound, so every draw is made on the generator's own device and then moved: the same
seed gives the same numbers whatever device the images are on.
"""
import torch


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
