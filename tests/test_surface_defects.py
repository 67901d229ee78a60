"""utils/surface_defects.py: defects made of the part's own surface (seeded, CPU)."""
import pytest
import torch

from utils.surface_defects import KINDS, blob, shade, soften, surface_defects, warp


def _inputs(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = (0.3 + 0.4 * torch.rand(n, 1, size, size, generator=g)).repeat(1, 3, 1, 1)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 8:20, 10:24] = 1
    texture = torch.rand(n, 3, size, size, generator=g)
    return image, mask, texture, g


def test_soften_keeps_mass_inside_and_blurs_edges():
    m = torch.zeros(1, 1, 32, 32)
    m[..., 10:20, 10:20] = 1
    s = soften(m, 1.5)
    assert s.shape == m.shape and 0 < s[0, 0, 9, 15] < 1 and s[0, 0, 15, 15] > 0.99


def test_shade_changes_only_near_the_mask():
    image, mask, _, g = _inputs()
    out, label = shade(image, mask, g)
    assert torch.equal(label, mask)
    assert torch.allclose(out[..., 0:2, :], image[..., 0:2, :])  # far from the mask: unchanged
    assert (out - image).abs()[..., 10:18, 12:22].mean() > 0.03


def test_blob_label_is_where_it_changed():
    image, _, _, g = _inputs()
    out, label = blob(image, g)
    diff = (out - image).abs().amax(1, keepdim=True)
    assert label.sum() > 0 and diff[label > 0].mean() > diff[label == 0].mean()


def test_warp_of_a_flat_image_is_labelled_normal():
    image, mask, _, g = _inputs()
    out, label = warp(torch.full_like(image, 0.5), mask, g)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-5) and label.sum() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_keeps_shapes_range_and_grey(kind):
    image, mask, texture, g = _inputs()
    texture = texture[:, :1].repeat(1, 3, 1, 1)
    out, label = surface_defects(image, mask, texture, g, kinds=(kind,))
    assert out.shape == image.shape and label.shape == mask.shape
    assert 0 <= out.min() and out.max() <= 1 and set(label.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 0], out[:, 2])


def test_unknown_kind_is_an_error():
    image, mask, texture, g = _inputs()
    with pytest.raises(ValueError, match="unknown surface defect"):
        surface_defects(image, mask, texture, g, kinds=("dent",))
