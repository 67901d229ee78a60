"""utils/jitter.py: whole-image jitter of good images (seeded, CPU)."""
import pytest
import torch

from utils.synthesis.simulation import KINDS, PHOTOMETRIC, jitter_images, parse_kinds


def test_parse_kinds_aliases_lists_and_errors():
    assert parse_kinds("none") == ()
    assert parse_kinds("photo") == PHOTOMETRIC
    assert parse_kinds("photo,flip,noise") == (*PHOTOMETRIC, "flip")
    assert parse_kinds("all") == KINDS
    with pytest.raises(ValueError, match="unknown jitter 'hue'"):
        parse_kinds("hue")


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_keeps_shape_range_grey_and_input(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16).repeat(1, 3, 1, 1)  # grey
    before = x.clone()
    y = jitter_images(x, g, (kind,), prob=1.0)
    assert y.shape == x.shape and torch.equal(x, before)
    assert 0 <= y.min() and y.max() <= 1
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 0], y[:, 2])  # grey stays grey
    assert not torch.equal(y, x)


def test_no_kinds_or_zero_prob_is_identity_and_seeded():
    x = torch.rand(4, 3, 8, 8)
    assert jitter_images(x, torch.Generator().manual_seed(0), ()) is x
    assert torch.equal(jitter_images(x, torch.Generator().manual_seed(0), PHOTOMETRIC, prob=0.0), x)
    a = jitter_images(x, torch.Generator().manual_seed(3), KINDS)
    b = jitter_images(x, torch.Generator().manual_seed(3), KINDS)
    assert torch.equal(a, b)


def test_rot90_on_non_square_images_keeps_the_shape():
    x = torch.rand(6, 3, 8, 12)
    assert jitter_images(x, torch.Generator().manual_seed(1), ("rot90",), prob=1.0).shape == x.shape
