"""utils/sampling.py: draws follow the generator, not the target device."""
import torch

from utils.synthesis.simulation import rand, randint, uniform


def test_draws_are_seeded_and_shaped():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(rand(g(), 2, 3), torch.rand(2, 3, generator=g()))
    u = uniform(g(), 5, 2.0, 3.0, "cpu", channels=3)
    assert u.shape == (5, 3, 1, 1) and (u >= 2).all() and (u < 3).all()
    assert uniform(g(), 5, 0.0, 1.0, "cpu", dims=3).shape == (5, 1, 1)
    i = randint(g(), 1, 9, 100, "cpu")
    assert i.shape == (100,) and i.min() >= 1 and i.max() <= 8
