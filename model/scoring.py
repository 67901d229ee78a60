"""From network outputs to what a user sees: the anomaly map and the image score.

`Scorer` is the one scoring graph (detect.py, evaluate.py, validation during training, calibration and the ONNX
export all run it): image -> reconstruction and anomaly map; its `score` is the image score rule. The rule's
parameters are attributes, stored in every checkpoint's config.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

SCORE_KERNEL = 21  # the authors' evaluation: mean filter 21x21, stride 1, then max


def anomaly_map(seg_logits):
    """Anomaly probability per pixel: softmax channel 1 of the discriminative output.

    seg_logits: (B, 2, H, W) -> (B, H, W) in [0, 1].
    """
    return torch.softmax(seg_logits.float(), dim=1)[:, 1]


def score_kernel(size, scaled=True):
    """Mean-filter size for `size`-pixel images: the authors' 21 px at 256 px, kept at the same share of the image
    (odd, >= 3) when `scaled`; 21 otherwise. At 128 px: 11, so a small defect is not averaged away."""
    if not scaled:
        return SCORE_KERNEL
    return max(3, int(round(SCORE_KERNEL * size / 256 / 2)) * 2 + 1)


def image_score(amap, kernel=SCORE_KERNEL, top_fraction=0.0):
    """Image-level score. amap: (B, H, W) -> (B,).

    top_fraction 0 (the authors' rule): max of the map after a kernel x kernel mean filter (stride 1, zero
    padding), as `avg_pool2d(..., 21, stride=1, padding=10)` then max, so a single hot pixel does not make an
    image anomalous, but a defect of ~kernel x kernel px does.
    top_fraction > 0: the mean of the `top_fraction` hottest pixels of the raw map (at least one pixel); it does
    not depend on the defect's shape (a thin crack fills little of a square window).
    """
    if top_fraction > 0:
        flat = amap.flatten(1)  # (B, H*W)
        k = max(1, int(flat.shape[1] * top_fraction + 0.5))  # rounded; int() also when tracing for ONNX
        return flat.topk(k, dim=1).values.mean(dim=1)
    # A zero-padded box mean is separable: a k x 1 then a 1 x k mean equals the k x k one (to float rounding)
    # at 2k instead of k*k operations per pixel.
    pad = kernel // 2
    smoothed = F.avg_pool2d(amap[:, None], (kernel, 1), stride=1, padding=(pad, 0))  # (B, 1, H, W)
    smoothed = F.avg_pool2d(smoothed, (1, kernel), stride=1, padding=(0, pad))
    return smoothed.flatten(1).max(dim=1).values


def autocast(device, dtype):
    """torch.autocast for `dtype` on `device`, or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Scorer(nn.Module):
    """A DRAEM module and its score rule: images (B, 3, H, W) in [0, 1] -> reconstruction (B, 3, H, W) in [0, 1]
    and anomaly map (B, H, W), fp32; `score(maps)` -> (B,).

    kernel, top_fraction: `image_score`'s rule; amp_dtype: autocast of the networks (None: fp32). The map and the
    score are always computed in fp32.
    """

    def __init__(self, draem, kernel=SCORE_KERNEL, top_fraction=0.0, amp_dtype=None):
        super().__init__()
        self.draem, self.kernel, self.top_fraction, self.amp_dtype = draem, kernel, top_fraction, amp_dtype

    @classmethod
    def from_config(cls, draem, config, amp_dtype=None):
        """The rule a checkpoint's config records (the authors' pairs: 21 px, max of the filtered map)."""
        return cls(draem, int(config.get("score_kernel", SCORE_KERNEL)),
                   float(config.get("score_top_fraction", 0.0)), amp_dtype)

    def forward(self, images):
        with autocast(images.device, self.amp_dtype):
            rec, logits = self.draem(images)
        return rec.float().clamp(0, 1), anomaly_map(logits)  # fp32 softmax

    def score(self, maps):
        return image_score(maps, self.kernel, self.top_fraction)
