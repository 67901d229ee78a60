import math

import pytest
import torch

from utils.loss import DraemLoss, SSIMLoss, focal_loss


def test_ssim_loss_zero_for_identical_and_grows_with_noise():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 32, 32)
    ssim = SSIMLoss()
    assert ssim(img, img).item() == pytest.approx(0.0, abs=1e-6)
    losses = [ssim((img + s * torch.randn_like(img)).clamp(0, 1), img).item() for s in (0.02, 0.1, 0.3)]
    assert 0 < losses[0] < losses[1] < losses[2]


def test_ssim_window_is_a_buffer_that_follows_to():
    ssim = SSIMLoss()
    assert "window" in dict(ssim.named_buffers())
    assert ssim.to(torch.float64).window.dtype == torch.float64


def test_focal_loss_matches_hand_computation_2x2():
    # p(anomaly) per pixel and targets on a 2x2 image
    p1 = torch.tensor([[0.9, 0.2], [0.6, 0.01]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probs = torch.stack([1 - p1, p1])[None]  # (1, 2, 2, 2)
    eps = 1e-5
    expected = 0.0
    for p, t in zip(p1.flatten().tolist(), target.flatten().tolist()):
        # one-hot clamped to [eps, 1 - eps], p_t = <one_hot, p> + eps
        pt = (1 - eps) * (p if t else 1 - p) + eps * (1 - p if t else p) + eps
        expected += -((1 - pt) ** 2) * math.log(pt)
    expected /= 4
    assert focal_loss(probs, target[None, None]).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_down_weights_easy_pixels():
    target = torch.ones(1, 1, 1, 1)
    easy = torch.tensor([0.05, 0.95]).view(1, 2, 1, 1)
    hard = torch.tensor([0.7, 0.3]).view(1, 2, 1, 1)
    ce_ratio = math.log(0.3) / math.log(0.95)
    assert focal_loss(hard, target) / focal_loss(easy, target) > 10 * ce_ratio


def test_total_loss_terms_and_finite_gradients():
    torch.manual_seed(0)
    rec = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    clean = torch.rand(2, 3, 32, 32)
    mask = (torch.rand(2, 1, 32, 32) > 0.8).float()
    out = DraemLoss()(rec, clean, logits, mask)
    assert set(out) == {"l2", "ssim", "focal", "loss"}
    assert out["loss"].item() == pytest.approx((out["l2"] + out["ssim"] + out["focal"]).item())
    out["loss"].backward()
    assert torch.isfinite(rec.grad).all() and torch.isfinite(logits.grad).all()
