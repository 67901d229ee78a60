"""Scoring images with a trained pair: one code path for detect.py, evaluate.py, validation and the benchmark."""
import contextlib

import torch

from model.scoring import SCORE_KERNEL, anomaly_map, image_score
from utils.checkpoint import load_pair
from utils.data_loader import read_image
from utils.tiling import SQUARE, is_tiled, scale_of, stitch, to_working_scale


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
    def from_checkpoint(cls, checkpoint_path, base_model_name, device, amp_dtype=None):
        model, meta = load_pair(checkpoint_path, base_model_name)
        return cls(model, meta, device, amp_dtype)

    def __call__(self, images):
        """images (B, 3, size, size) on any device -> predict() outputs on self.device."""
        return predict(self.model, images.to(self.device, non_blocking=True), self.amp_dtype, self.kernel)

    def read(self, path):
        """An image file as (3, H, W) in [0, 1] at this checkpoint's working scale."""
        if self.scale == SQUARE:
            return read_image(path, self.size)
        return to_working_scale(read_image(path), self.scale, self.size)

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


def whole_image_scores(model, images, tile, amp_dtype=None, kernel=SCORE_KERNEL, device=None):
    """uint8 images (3, H_i, W_i) at the working scale -> (N,) scores of their stitched maps, as detection
    scores them (model in eval mode meanwhile; its training mode is restored)."""
    was_training = model.training
    model.eval()
    scores = [predict_tiled(model, im.float() / 255, tile, amp_dtype, kernel, device,
                            with_reconstruction=False)["score"].cpu() for im in images]
    model.train(was_training)
    return torch.stack(scores)
