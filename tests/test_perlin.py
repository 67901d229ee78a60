import math

import pytest
import torch

from utils.perlin import perlin_noise, random_perlin_scales


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _authors_rand_perlin_2d(shape, res, angles):
    """The authors' rand_perlin_2d (needs shape divisible by res), with the gradient angles passed in."""
    fade = lambda t: 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3  # noqa: E731
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = torch.stack(torch.meshgrid(torch.arange(0, res[0], delta[0]), torch.arange(0, res[1], delta[1]),
                                      indexing="ij"), dim=-1) % 1
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)

    def tile(s1, s2):
        return gradients[s1[0]:s1[1], s2[0]:s2[1]].repeat_interleave(d[0], 0).repeat_interleave(d[1], 1)

    def dot(grad, shift):
        return (torch.stack((grid[..., 0] + shift[0], grid[..., 1] + shift[1]), dim=-1) * grad).sum(dim=-1)

    n00 = dot(tile([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile([0, -1], [1, None]), [0, -1])
    n11 = dot(tile([1, None], [1, None]), [-1, -1])
    t = fade(grid)
    return math.sqrt(2) * torch.lerp(torch.lerp(n00, n10, t[..., 0]), torch.lerp(n01, n11, t[..., 0]), t[..., 1])


def test_matches_authors_noise_on_divisible_shapes():
    scales = torch.tensor([[4, 8], [1, 32], [16, 2]])
    ours = perlin_noise(3, 32, 64, scales, generator=_gen(1))
    angles = 2 * math.pi * torch.rand(3, 33, 33, generator=_gen(1))  # the same draw perlin_noise makes
    for b, (ry, rx) in enumerate(scales.tolist()):
        ref = _authors_rand_perlin_2d((32, 64), (ry, rx), angles[b, :ry + 1, :rx + 1])
        torch.testing.assert_close(ours[b], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(200, 328), (33, 17), (1, 1), (127, 33)])
def test_any_shape_and_range(shape):
    noise = perlin_noise(3, *shape, generator=_gen())
    assert noise.shape == (3, *shape) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1.0 + 1e-5


def test_scales_are_powers_of_two_in_paper_range():
    s = random_perlin_scales(500, _gen())
    assert s.shape == (500, 2) and s.dtype == torch.int64
    assert set(s.unique().tolist()) == {1, 2, 4, 8, 16, 32}


def test_samples_differ_and_seed_reproduces():
    a = perlin_noise(4, 40, 40, generator=_gen(3))
    b = perlin_noise(4, 40, 40, generator=_gen(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    assert not torch.equal(a, perlin_noise(4, 40, 40, generator=_gen(4)))


def test_bad_scale_rejected():
    with pytest.raises(ValueError):
        perlin_noise(1, 8, 8, torch.tensor([[64, 1]]))


def test_mask_coverage_is_plausible():
    # DRAEM thresholds the noise at 0.5: masks should be mostly non-empty, partial, of varied size
    masks = perlin_noise(64, 64, 64, generator=_gen(5)) > 0.5
    coverage = masks.float().mean(dim=(1, 2))
    assert (coverage == 0).float().mean() < 0.5
    assert 0.02 < coverage.mean() < 0.6
    assert (coverage < 1).all()
    assert coverage.std() > 0.01
