import logging

import cv2
import numpy as np
import pytest
import torch

from utils.synthesis import (AUGMENTER_NAMES, AnomalySynthesizer, apply_augmenter, augment_textures, blend,
                             load_texture_bank, main, procedural_textures, rotate, synthesis_throughput)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=4, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=_gen(seed))


def _grey(b=4, h=32, w=32):
    return _images(b, h, w)[:, :1].expand(-1, 3, -1, -1).contiguous()


def test_blend_hand_example():
    image = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]])
    texture = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # inside the mask 0.75 * texture + 0.25 * image, outside the image
    expected = torch.tensor([[[[0.75 + 0.05, 0.4], [0.6, 0.75 + 0.2]]]])
    torch.testing.assert_close(blend(image, texture, mask, torch.tensor([0.25])), expected)
    torch.testing.assert_close(blend(image, texture, mask, 0.25), expected)


def test_augmenter_names():
    assert AUGMENTER_NAMES == ("gamma", "brightness", "sharpness", "hue_saturation", "solarize", "posterize",
                               "invert", "autocontrast", "equalize", "rotate")


@pytest.mark.parametrize("name", AUGMENTER_NAMES)
@pytest.mark.parametrize("make", [_images, _grey], ids=["rgb", "grey"])
def test_augmenter_keeps_range_and_shape(name, make):
    x = make(3, 24, 40)
    before = x.clone()
    out = apply_augmenter(name, x, _gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(x, before)  # the caller's tensor is left alone
    assert not torch.equal(out, x) or name == "solarize"  # solarize skips half of the images


def test_unknown_augmenter():
    with pytest.raises(ValueError, match="unknown augmenter"):
        apply_augmenter("blur", _images(), _gen())


def test_invert_and_posterize_values():
    x = torch.tensor([0.0, 0.3, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(apply_augmenter("invert", x, _gen()), 1 - x)
    out = apply_augmenter("posterize", x, _gen()) * 255
    torch.testing.assert_close(out, out.round(), atol=1e-3, rtol=0)  # still uint8 levels ...
    assert (out <= x * 255 + 0.5).all()  # ... rounded down


def test_equalize_follows_pil():
    # two equally frequent grey levels: PIL's equalize maps them to 0 and 255 ...
    x = torch.full((1, 3, 32, 32), 0.2)
    x[..., 16:, :] = 0.8
    assert set(apply_augmenter("equalize", x, _gen()).unique().tolist()) == {0.0, 1.0}
    # ... but leaves an image alone when step = (pixels outside the last bin) // 255 is 0
    torch.testing.assert_close(apply_augmenter("equalize", x[..., ::2, ::2], _gen()), x[..., ::2, ::2])


def test_autocontrast_stretches_each_channel():
    x = 0.25 + 0.5 * _images(2, 16, 16)
    out = apply_augmenter("autocontrast", x, _gen())
    assert (out.amin(dim=(2, 3)) == 0).all() and (out.amax(dim=(2, 3)) == 1).all()


def test_hue_saturation_keeps_value_and_matches_opencv_hue():
    x = _images(4, 16, 16)
    out = apply_augmenter("hue_saturation", x, _gen())
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
    x = _images(2, 20, 30)
    torch.testing.assert_close(rotate(x, torch.zeros(2)), x, atol=1e-5, rtol=0)
    turned = rotate(torch.ones(1, 1, 20, 30), torch.tensor([45.0]))
    assert turned[0, 0, 0, 0] == 0 and turned[0, 0, 10, 15] > 0.99


def test_augment_textures_is_seeded_and_leaves_input():
    x = _images(6)
    before = x.clone()
    a, b = augment_textures(x, _gen(1)), augment_textures(x, _gen(1))
    assert torch.equal(a, b) and a.shape == x.shape and torch.equal(x, before)
    assert a.min() >= 0 and a.max() <= 1


def test_procedural_textures():
    tex = procedural_textures(12, 24, 40, _gen())
    assert tex.shape == (12, 3, 24, 40) and tex.min() >= 0 and tex.max() <= 1
    assert tex.flatten(1).std(dim=1).min() > 0  # patterns, not flat colours
    assert torch.equal(tex, procedural_textures(12, 24, 40, _gen()))


def _bank(n=5, size=16):
    return (torch.rand(n, 3, size, size, generator=_gen(7)) * 255).to(torch.uint8)


def _check_batch(out, images):
    b, _, h, w = images.shape
    assert out["image"].shape == out["augmented_image"].shape == (b, 3, h, w)
    assert out["anomaly_mask"].shape == (b, 1, h, w) and out["has_anomaly"].shape == (b,)
    assert set(out["anomaly_mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(out["has_anomaly"].unique().tolist()) <= {0.0, 1.0}
    assert out["augmented_image"].min() >= 0 and out["augmented_image"].max() <= 1
    normal = out["has_anomaly"] == 0
    assert (out["anomaly_mask"][normal] == 0).all()
    assert torch.equal(out["augmented_image"][normal], out["image"][normal])
    assert (out["anomaly_mask"][~normal].flatten(1).amax(1) == 1).all()


@pytest.mark.parametrize("bank", [None, _bank(size=32), _bank(size=16)], ids=["procedural", "bank", "resize"])
def test_synthesizer_output_contract(bank):
    images = _images(16, 32, 32)
    out = AnomalySynthesizer(bank)(images, _gen(2))
    _check_batch(out, images)
    assert out["has_anomaly"].sum() > 0


def test_anomaly_fraction_and_normal_samples():
    images = _images(256, 32, 32)
    out = AnomalySynthesizer(_bank(size=32), rotate_prob=0.0)(images, _gen(3))
    _check_batch(out, images)
    assert torch.equal(out["image"], images)  # no rotation asked for
    assert 0.3 < out["has_anomaly"].mean() < 0.6  # 0.5 minus the few empty masks
    none = AnomalySynthesizer(_bank(), anomaly_prob=0.0)(images[:8], _gen())
    assert none["has_anomaly"].sum() == 0 and torch.equal(none["augmented_image"], none["image"])


def test_rotation_of_clean_image():
    images = _images(8, 32, 32)
    out = AnomalySynthesizer(_bank(), rotate_prob=1.0, anomaly_prob=0.0)(images, _gen())
    assert not torch.equal(out["image"], images)
    assert (out["image"][:, :, 0, 0] == 0).float().mean() > 0.5  # corners filled with 0, as imgaug


def test_grayscale_anomalies_are_grey():
    out = AnomalySynthesizer(_bank(size=32), grayscale=True, anomaly_prob=1.0)(_grey(8), _gen(4))
    aug = out["augmented_image"]
    torch.testing.assert_close(aug[:, 0], aug[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(aug[:, 0], aug[:, 2], atol=1e-5, rtol=0)
    assert out["has_anomaly"].sum() > 0


def test_same_seed_same_batch():
    synth = AnomalySynthesizer(_bank())
    images = _images(8)
    a, b = synth(images, _gen(9)), synth(images, _gen(9))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = synth(images, _gen(10))
    assert not torch.equal(a["augmented_image"], c["augmented_image"])


def test_bad_bank_rejected():
    with pytest.raises(ValueError):
        AnomalySynthesizer(torch.rand(2, 3, 8, 8))


def test_throughput_runs():
    assert synthesis_throughput(AnomalySynthesizer(_bank()), batch=2, size=16, iters=1) > 0


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


def test_sample_grid_cli(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(tmp_path / "good" / f"{i}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _write(tmp_path / "dtd" / "t.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "grid.png"
    main(["--data_path", str(tmp_path / "good"), "--anomaly_source_path", str(tmp_path / "dtd"),
          "--size", "32", "--n", "2", "--out", str(out), "--grayscale"])
    assert out.stat().st_size > 0
