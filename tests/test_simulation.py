"""utils/synthesis/simulation.py: the anomaly simulation of both recipes, cracks and pits, the whole-image
jitter of good images and the grid of samples (seeded, CPU)."""
import cv2
import numpy as np
import pytest
import torch

import train
from tests.conftest import generator, grey_images, random_images
from utils.config import PHOTOMETRIC
from utils.synthesis.simulation import (KINDS, AnomalySynthesizer, DefectSynthesizer, blend, crack_masks,
                                        jitter_images, make_synthesizer, mixed_masks, parse_kinds, pit_masks,
                                        samples_picture)


def test_blend_hand_example():
    image = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]])
    texture = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # inside the mask 0.75 * texture + 0.25 * image, outside the image
    expected = torch.tensor([[[[0.75 + 0.05, 0.4], [0.6, 0.75 + 0.2]]]])
    torch.testing.assert_close(blend(image, texture, mask, torch.tensor([0.25])), expected)
    torch.testing.assert_close(blend(image, texture, mask, 0.25), expected)


def _bank(n=5, size=16):
    return (torch.rand(n, 3, size, size, generator=generator(7)) * 255).to(torch.uint8)


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
    images = random_images(16, 32, 32)
    out = AnomalySynthesizer(bank)(images, generator(2))
    _check_batch(out, images)
    assert out["has_anomaly"].sum() > 0


def test_anomaly_fraction_and_normal_samples():
    images = random_images(256, 32, 32)
    out = AnomalySynthesizer(_bank(size=32), rotate_prob=0.0)(images, generator(3))
    _check_batch(out, images)
    assert torch.equal(out["image"], images)  # no rotation asked for
    assert 0.3 < out["has_anomaly"].mean() < 0.6  # 0.5 minus the few empty masks
    none = AnomalySynthesizer(_bank(), anomaly_prob=0.0)(images[:8], generator())
    assert none["has_anomaly"].sum() == 0 and torch.equal(none["augmented_image"], none["image"])


def test_rotation_of_clean_image():
    images = random_images(8, 32, 32)
    out = AnomalySynthesizer(_bank(), rotate_prob=1.0, anomaly_prob=0.0)(images, generator())
    assert not torch.equal(out["image"], images)
    assert (out["image"][:, :, 0, 0] == 0).float().mean() > 0.5  # corners filled with 0, as imgaug


def test_grayscale_anomalies_aregrey_images():
    out = AnomalySynthesizer(_bank(size=32), grayscale=True, anomaly_prob=1.0)(grey_images(8), generator(4))
    aug = out["augmented_image"]
    torch.testing.assert_close(aug[:, 0], aug[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(aug[:, 0], aug[:, 2], atol=1e-5, rtol=0)
    assert out["has_anomaly"].sum() > 0


def test_same_seed_same_batch():
    synth = AnomalySynthesizer(_bank())
    images = random_images(8)
    a, b = synth(images, generator(9)), synth(images, generator(9))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = synth(images, generator(10))
    assert not torch.equal(a["augmented_image"], c["augmented_image"])


def test_bad_bank_rejected():
    with pytest.raises(ValueError):
        AnomalySynthesizer(torch.rand(2, 3, 8, 8))


def test_recipes():
    ours = make_synthesizer("ours", None, grayscale=True)
    paper = make_synthesizer("paper", None, grayscale=True)
    assert isinstance(ours, DefectSynthesizer) and not isinstance(paper, DefectSynthesizer)
    out = ours(torch.rand(8, 1, 64, 64).expand(-1, 3, -1, -1), generator())
    assert out["augmented_image"].shape == (8, 3, 64, 64)
    assert torch.allclose(out["augmented_image"][:, 0], out["augmented_image"][:, 1])  # grey in, grey out


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


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_samples_picture_is_a_png_of_three_rows():
    synth = make_synthesizer("ours", None, grayscale=False, anomaly_prob=1.0)
    png = samples_picture(synth(random_images(2, 32), generator(0)))
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 2 * 80 and img.shape[1] > 80  # 3 rows, 2 columns at 1.6 in, 80 dpi


def test_train_preview_writes_the_picture_and_trains_nothing(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(tmp_path / "good" / f"{i}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _write(tmp_path / "dtd" / "t.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    out, ck, logs = tmp_path / "out" / "grid.png", tmp_path / "ck", tmp_path / "logs"
    code = train.main(["--data_path", str(tmp_path / "good"), "--anomaly_source_path", str(tmp_path / "dtd"),
                       "--size", "32", "--preview", str(out), "--checkpoint_path", str(ck), "--log_path", str(logs)])
    assert code == 0 and cv2.imread(str(out)) is not None
    assert not ck.exists() and not logs.exists()
