"""Scoring images with a trained pair: one code path for detect.py, evaluate.py, validation and the benchmark.

For a line's own software (the README's "Python API"):
    detector = Detector.from_checkpoint("checkpoints/", "DRAEM_test_0.0001_20_bs8_coil_")   # load once
    result = detector.score(rgb_image)   # numpy (H, W, 3) or a batch -> score, anomaly_map, verdict per image
"""
import contextlib
import logging

import numpy as np
import torch

from model.scoring import SCORE_KERNEL, anomaly_map, image_score
from utils.checkpoint import load_pair
from utils.data_loader import image_to_tensor, read_at_scale
from utils.tiling import SQUARE, is_tiled, scale_of, stitch, to_working_scale

log = logging.getLogger(__name__)


def autocast(device, dtype):
    """torch.autocast for `dtype` on `device`, or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model, images, amp_dtype):
    """images (B, 3, H, W) -> reconstruction (B, 3, H, W) and anomaly map (B, H, W), fp32."""
    with autocast(images.device, amp_dtype):
        rec, logits = model(images)
    return rec.float().clamp(0, 1), anomaly_map(logits)  # fp32 softmax


@torch.inference_mode()
def predict(model, images, amp_dtype=None, kernel=SCORE_KERNEL):
    """images (B, 3, H, W) in [0, 1] on the model's device -> dict of
    reconstruction (B, 3, H, W), anomaly_map (B, H, W) and score (B,) (mean filter `kernel`), all fp32."""
    rec, amap = _forward(model, images, amp_dtype)
    return {"reconstruction": rec, "anomaly_map": amap, "score": image_score(amap, kernel)}


@torch.inference_mode()
def predict_tiled(model, image, tile, amp_dtype=None, kernel=SCORE_KERNEL, device=None, tile_batch=16,
                  with_reconstruction=True):
    """One image (3, H, W) at the working scale, any H and W -> reconstruction (3, H, W) (None unless
    `with_reconstruction`), anomaly_map (H, W) stitched from tile x tile tiles (utils/tiling.py), and the score
    of the stitched map (a 0-d tensor), with the same score function as `predict`."""
    def run(tiles):  # (B, 3, tile, tile) -> (B, tile, tile), (B, 3, tile, tile)
        rec, amap = _forward(model, tiles, amp_dtype)
        return amap, rec
    out = stitch(image, run, tile, tile_batch=tile_batch, with_reconstruction=with_reconstruction, device=device)
    out["score"] = image_score(out["anomaly_map"][None], kernel)[0]
    return out


class Detector:
    """A loaded checkpoint pair on a device, with what the checkpoint says about size, scale and threshold."""

    def __init__(self, model, meta, device, amp_dtype=None):
        self.model = model.to(device).eval()
        self.meta, self.device, self.amp_dtype = meta, device, amp_dtype
        self.size = int(meta["config"]["size"])
        self.scale = scale_of(meta["config"])  # "square" (whole image resized), "native" or a longer side N
        self.threshold = meta["calibration"].get("threshold")
        self.kernel = int(meta["config"].get("score_kernel", SCORE_KERNEL))

    @classmethod
    def from_checkpoint(cls, checkpoint_path, base_model_name, device="cpu", amp_dtype=None):
        model, meta = load_pair(checkpoint_path, base_model_name)
        return cls(model, meta, torch.device(device), amp_dtype)

    def __call__(self, images):
        """images (B, 3, size, size) on any device -> predict() outputs on self.device."""
        return predict(self.model, images.to(self.device, non_blocking=True), self.amp_dtype, self.kernel)

    def read(self, path):
        """An image file as (3, H, W) in [0, 1] at this checkpoint's working scale."""
        return read_at_scale(path, self.size, self.scale)

    def predict_image(self, image, with_reconstruction=True):
        """One image (3, H, W) at the working scale -> predict_tiled() outputs on self.device."""
        return predict_tiled(self.model, image, self.size, self.amp_dtype, self.kernel, self.device,
                             with_reconstruction=with_reconstruction)

    def predict_batch(self, images, with_reconstruction=True):
        """A list of images from `read` -> dict of reconstruction, anomaly_map, score, indexable per image:
        batched tensors for "square", lists of per-image tiled outputs (sizes may differ) otherwise."""
        if not is_tiled(self.scale):
            return self(torch.stack(list(images)))
        outs = [self.predict_image(im, with_reconstruction) for im in images]
        return {k: [o[k] for o in outs] for k in ("reconstruction", "anomaly_map", "score")}

    def verdict(self, score):
        if self.threshold is None:
            return "n/a"
        return "NG" if score > self.threshold else "OK"

    def score(self, images):
        """Numpy images in, numpy results out: one image (H, W) / (H, W, 1|3|4), or a batch (a list of such, or
        an (N, H, W, C) array), RGB, uint8 / uint16 / float in [0, 1], any size (resized as detect.py does).

        Returns dict(score (N,) float32, anomaly_map (N, size, size) float32 in [0, 1] (with --scale native / N:
        a list of (H, W) maps at the working scale, tiled and stitched), verdict [N x "OK" / "NG" / "n/a"]), one
        entry per image, also for a single image.
        """
        single = isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] <= 4))
        if self.scale == SQUARE:
            tensors = [image_to_tensor(im, self.size) for im in ([images] if single else images)]
        else:
            tensors = [to_working_scale(image_to_tensor(im), self.scale, self.size)
                       for im in ([images] if single else images)]
        out = self.predict_batch(tensors, with_reconstruction=False)
        scores = np.array([float(s) for s in out["score"]], dtype=np.float32)
        maps = [m.float().cpu().numpy() for m in out["anomaly_map"]]
        return {"score": scores, "anomaly_map": np.stack(maps) if self.scale == SQUARE else maps,
                "verdict": [self.verdict(float(s)) for s in scores]}


def whole_image_scores(model, images, tile, amp_dtype=None, kernel=SCORE_KERNEL, device=None):
    """uint8 images (3, H_i, W_i) at the working scale -> (N,) scores of their stitched maps, as detection
    scores them (model in eval mode meanwhile; its training mode is restored)."""
    was_training = model.training
    model.eval()
    scores = [predict_tiled(model, im.float() / 255, tile, amp_dtype, kernel, device,
                            with_reconstruction=False)["score"].cpu() for im in images]
    model.train(was_training)
    return torch.stack(scores)


def score_files(detector, files, bs=8):
    """Image scores (N,) as a numpy array for image files, read and scored as detect.py does (batched, or tiled at
    the checkpoint's scale); unreadable files are skipped with a warning."""
    scores = []
    for i in range(0, len(files), bs):
        images = []
        for f in files[i:i + bs]:
            try:
                images.append(detector.read(f))
            except ValueError as e:
                log.warning("skipping %s", e)
        if images:
            out = detector.predict_batch(images, with_reconstruction=False)
            scores.append(np.array([float(x) for x in out["score"]]))
    return np.concatenate(scores) if scores else np.zeros(0)
