"""utils/synthesis/textures.py: texture bank, procedural textures, the ten augmenters and the random draws."""
import logging

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import generator, grey_images, random_images
from utils.synthesis.simulation import rand, randint, uniform
from utils.synthesis.textures import (AUGMENTER_NAMES, AUGMENTERS, augment_textures, load_texture_bank,
                                      procedural_textures, rotate)


def test_procedural_textures():
    tex = procedural_textures(12, 24, 40, generator())
    assert tex.shape == (12, 3, 24, 40) and tex.min() >= 0 and tex.max() <= 1
    assert tex.flatten(1).std(dim=1).min() > 0  # patterns, not flat colours
    assert torch.equal(tex, procedural_textures(12, 24, 40, generator()))


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_load_texture_bank_nested_mixed(tmp_path, caplog):
    rng = np.random.default_rng(0)
    _write(tmp_path / "a.jpg", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _write(tmp_path / "sub" / "b.PNG", rng.integers(0, 255, (12, 12), dtype=np.uint8))  # grey
    _write(tmp_path / "sub" / "deeper" / "c.bmp", rng.integers(0, 255, (8, 40, 3), dtype=np.uint8))
    (tmp_path / "sub" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        bank = load_texture_bank(tmp_path, 16)
    assert bank.shape == (3, 3, 16, 16) and bank.dtype == torch.uint8
    assert "broken.png" in caplog.text
    assert load_texture_bank(tmp_path, 8, max_images=2).shape == (2, 3, 8, 8)


def test_load_texture_bank_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found in anomaly source folder"):
        load_texture_bank(tmp_path / "empty", 16)


def apply_augmenter(name, x, gen):
    """One augmenter on a copy of x, as augment_textures runs it (augmenters may overwrite their input)."""
    return AUGMENTERS[name](x.clone(), gen)


def test_augmenter_names():
    assert AUGMENTER_NAMES == ("gamma", "brightness", "sharpness", "hue_saturation", "solarize", "posterize",
                               "invert", "autocontrast", "equalize", "rotate")


@pytest.mark.parametrize("name", AUGMENTER_NAMES)
@pytest.mark.parametrize("make", [random_images, grey_images], ids=["rgb", "grey"])
def test_augmenter_keeps_range_and_shape(name, make):
    x = make(3, 24, 40)
    before = x.clone()
    out = apply_augmenter(name, x, generator())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(x, before)  # the caller's tensor is left alone
    assert not torch.equal(out, x) or name == "solarize"  # solarize skips half of the images


def test_invert_and_posterize_values():
    x = torch.tensor([0.0, 0.3, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(apply_augmenter("invert", x, generator()), 1 - x)
    out = apply_augmenter("posterize", x, generator()) * 255
    torch.testing.assert_close(out, out.round(), atol=1e-3, rtol=0)  # still uint8 levels ...
    assert (out <= x * 255 + 0.5).all()  # ... rounded down


def test_equalize_follows_pil():
    # two equally frequent grey levels: PIL's equalize maps them to 0 and 255 ...
    x = torch.full((1, 3, 32, 32), 0.2)
    x[..., 16:, :] = 0.8
    assert set(apply_augmenter("equalize", x, generator()).unique().tolist()) == {0.0, 1.0}
    # ... but leaves an image alone when step = (pixels outside the last bin) // 255 is 0
    torch.testing.assert_close(apply_augmenter("equalize", x[..., ::2, ::2], generator()), x[..., ::2, ::2])


def test_autocontrast_stretches_each_channel():
    x = 0.25 + 0.5 * random_images(2, 16, 16)
    out = apply_augmenter("autocontrast", x, generator())
    assert (out.amin(dim=(2, 3)) == 0).all() and (out.amax(dim=(2, 3)) == 1).all()


def test_hue_saturation_keeps_value_and_matches_opencv_hue():
    x = random_images(4, 16, 16)
    out = apply_augmenter("hue_saturation", x, generator())
    torch.testing.assert_close(out.amax(dim=1), x.amax(dim=1), atol=1e-5, rtol=0)  # V of HSV is unchanged
    # hue is shifted by the same angle for all pixels of an image (where saturation stays inside (0, 1))
    hue = lambda t: cv2.cvtColor(t.permute(1, 2, 0).numpy().copy(), cv2.COLOR_RGB2HSV)[..., 0]  # noqa: E731
    for i in range(4):
        diff = (hue(out[i]) - hue(x[i])) % 360
        sat_out = cv2.cvtColor(out[i].permute(1, 2, 0).numpy().copy(), cv2.COLOR_RGB2HSV)[..., 1]
        ok = (sat_out > 0.05) & (sat_out < 0.95)
        d = np.angle(np.exp(1j * np.deg2rad(diff[ok])))  # wrap to (-pi, pi]
        assert np.ptp(d) < 0.05 and abs(np.rad2deg(np.median(d))) <= 50 / 255 * 360 + 1


def test_rotate_zero_is_identity_and_fills_black():
    x = random_images(2, 20, 30)
    torch.testing.assert_close(rotate(x, torch.zeros(2)), x, atol=1e-5, rtol=0)
    turned = rotate(torch.ones(1, 1, 20, 30), torch.tensor([45.0]))
    assert turned[0, 0, 0, 0] == 0 and turned[0, 0, 10, 15] > 0.99


def test_augment_textures_is_seeded_and_leaves_input():
    x = random_images(6)
    before = x.clone()
    a, b = augment_textures(x, generator(1)), augment_textures(x, generator(1))
    assert torch.equal(a, b) and a.shape == x.shape and torch.equal(x, before)
    assert a.min() >= 0 and a.max() <= 1


def test_draws_are_seeded_and_shaped():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(rand(g(), 2, 3), torch.rand(2, 3, generator=g()))
    u = uniform(g(), 5, 2.0, 3.0, "cpu", channels=3)
    assert u.shape == (5, 3, 1, 1) and (u >= 2).all() and (u < 3).all()
    assert uniform(g(), 5, 0.0, 1.0, "cpu", dims=3).shape == (5, 1, 1)
    i = randint(g(), 1, 9, 100, "cpu")
    assert i.shape == (100,) and i.min() >= 1 and i.max() <= 8
