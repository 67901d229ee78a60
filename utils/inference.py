"""Scoring images with a trained pair: one code path for detect.py, evaluate.py, validation and the benchmark.

For a line's own software (the README's "Python API"):
    detector = Detector.from_checkpoint("checkpoints/", "DRAEM_test_0.0001_20_bs8_coil_")   # load once
    result = detector.score(rgb_image)   # numpy (H, W, 3) or a batch -> score, anomaly_map, verdict per image
"""
import contextlib

import numpy as np
import torch

from model.scoring import SCORE_KERNEL, anomaly_map, image_score
from utils.checkpoint import load_pair
from utils.data_loader import image_to_tensor


def autocast(device, dtype):
    """torch.autocast for `dtype` on `device`, or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict(model, images, amp_dtype=None, kernel=SCORE_KERNEL):
    """images (B, 3, H, W) in [0, 1] on the model's device -> dict of
    reconstruction (B, 3, H, W), anomaly_map (B, H, W) and score (B,) (mean filter `kernel`), all fp32."""
    with autocast(images.device, amp_dtype):
        rec, logits = model(images)
    amap = anomaly_map(logits)  # fp32 softmax
    return {"reconstruction": rec.float().clamp(0, 1), "anomaly_map": amap, "score": image_score(amap, kernel)}


class Detector:
    """A loaded checkpoint pair on a device, with what the checkpoint says about size and threshold."""

    def __init__(self, model, meta, device, amp_dtype=None):
        self.model = model.to(device).eval()
        self.meta, self.device, self.amp_dtype = meta, device, amp_dtype
        self.size = int(meta["config"]["size"])
        self.threshold = meta["calibration"].get("threshold")
        self.kernel = int(meta["config"].get("score_kernel", SCORE_KERNEL))

    @classmethod
    def from_checkpoint(cls, checkpoint_path, base_model_name, device="cpu", amp_dtype=None):
        model, meta = load_pair(checkpoint_path, base_model_name)
        return cls(model, meta, torch.device(device), amp_dtype)

    def __call__(self, images):
        """images (B, 3, size, size) on any device -> predict() outputs on self.device."""
        return predict(self.model, images.to(self.device, non_blocking=True), self.amp_dtype, self.kernel)

    def verdict(self, score):
        if self.threshold is None:
            return "n/a"
        return "NG" if score > self.threshold else "OK"

    def score(self, images):
        """Numpy images in, numpy results out: one image (H, W) / (H, W, 1|3|4), or a batch (a list of such, or
        an (N, H, W, C) array), RGB, uint8 / uint16 / float in [0, 1], any size (resized as detect.py does).

        Returns dict(score (N,) float32, anomaly_map (N, size, size) float32 in [0, 1], verdict [N x "OK" / "NG" /
        "n/a"]), one entry per image, also for a single image.
        """
        single = isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] <= 4))
        batch = torch.stack([image_to_tensor(im, self.size) for im in ([images] if single else images)])
        out = self(batch)
        scores = out["score"].float().cpu().numpy()
        return {"score": scores, "anomaly_map": out["anomaly_map"].float().cpu().numpy(),
                "verdict": [self.verdict(float(s)) for s in scores]}
