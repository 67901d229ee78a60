import torch

from utils.synthesis.simulation import crack_masks, mixed_masks, pit_masks


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_cracks_are_thin_and_elongated_pits_small():
    c = crack_masks(32, 128, 96, gen())
    p = pit_masks(32, 128, 96, gen())
    assert c.shape == p.shape == (32, 1, 128, 96)
    assert set(c.unique().tolist()) <= {0.0, 1.0}
    assert (c.flatten(1).sum(1) > 0).all() and (p.flatten(1).sum(1) > 0).all()
    assert c.mean() < 0.03 and p.mean() < 0.05  # small defects, unlike Perlin blobs
    # elongated: the bounding box of a crack is much larger than its area would fill
    ys, xs = c[0, 0].nonzero(as_tuple=True)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert c[0].sum() < 0.5 * box


def test_same_seed_same_masks_and_mix_proportions():
    assert torch.equal(crack_masks(4, 64, 64, gen(3)), crack_masks(4, 64, 64, gen(3)))
    perlin = lambda n, h, w: torch.full((n, 1, h, w), 2.0)  # noqa: E731  marks the Perlin samples
    m = mixed_masks(400, 32, 32, gen(), perlin)
    share = (m.flatten(1).amax(1) == 2.0).float().mean().item()
    assert abs(share - 0.5) < 0.08
