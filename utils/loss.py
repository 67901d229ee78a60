"""DRAEM's losses: L2 + SSIM for the reconstruction, focal loss for the segmentation.

Nothing here picks a device: the SSIM window is a registered buffer and follows `.to(device)`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def gaussian_window(size=11, sigma=1.5):
    """Normalised 2-D Gaussian (size, size)."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


class SSIMLoss(nn.Module):
    """1 - SSIM with an 11x11 Gaussian window (sigma 1.5), for images in [0, 1] (dynamic range L = 1).

    As the authors' SSIM: per-channel (grouped) filtering, zero padding, mean over all pixels.
    """

    def __init__(self, window_size=11, sigma=1.5, channels=3):
        super().__init__()
        win = gaussian_window(window_size, sigma)
        self.register_buffer("window", win.expand(channels, 1, window_size, window_size).contiguous())
        self.pad = window_size // 2

    def forward(self, img1, img2):
        c = img1.shape[1]
        w = self.window[:c].to(img1.dtype)
        blur = lambda x: F.conv2d(x, w, padding=self.pad, groups=c)  # noqa: E731
        mu1, mu2 = blur(img1), blur(img2)
        s11 = blur(img1 * img1) - mu1 ** 2
        s22 = blur(img2 * img2) - mu2 ** 2
        s12 = blur(img1 * img2) - mu1 * mu2
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        ssim = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
        return 1.0 - ssim.mean()


def focal_loss(probs, target, gamma=2.0, smooth=1e-5):
    """DRAEM's focal loss on softmax probabilities.

    probs: (B, 2, H, W) softmax output; target: (B, 1, H, W) in {0, 1}.
    As the authors' FocalLoss: one-hot target clamped to [smooth, 1 - smooth], p_t = <one_hot, p> + smooth,
    loss = mean(-(1 - p_t)**gamma * log(p_t)). Easy pixels (p_t near 1) are down-weighted by (1 - p_t)**gamma.
    """
    t = target[:, 0].long()  # (B, H, W)
    one_hot = F.one_hot(t, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)  # (B, 2, H, W)
    one_hot = one_hot.clamp(smooth / (probs.shape[1] - 1), 1.0 - smooth)
    pt = (one_hot * probs).sum(dim=1) + smooth  # (B, H, W)
    return (-((1 - pt) ** gamma) * pt.log()).mean()


class DraemLoss(nn.Module):
    """Total loss = L2(rec, clean) + SSIM(rec, clean) + focal(softmax(logits), mask).

    Returns a dict of the three terms and the total so the logger can plot each.
    """

    def __init__(self, channels=3):
        super().__init__()
        self.ssim = SSIMLoss(channels=channels)

    def forward(self, rec, clean, seg_logits, mask):
        # Losses in fp32 even under autocast: SSIM's variances and the focal log are precision-sensitive.
        rec, clean = rec.float(), clean.float()
        l2 = F.mse_loss(rec, clean)
        ssim = self.ssim(rec, clean)
        focal = focal_loss(torch.softmax(seg_logits.float(), dim=1), mask)
        return {"l2": l2, "ssim": ssim, "focal": focal, "loss": l2 + ssim + focal}
