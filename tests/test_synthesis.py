"""utils/synthesis.py: the anomaly simulation of both recipes."""
import pytest
import torch

from tests.conftest import generator, grey_images, random_images
from utils.synthesis.simulation import AnomalySynthesizer, DefectSynthesizer, blend, make_synthesizer


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
